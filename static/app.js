// XRayVision dashboard: a hash-routed page over /api and /ws. Every text from users,
// the model or the hospital system goes into the page through textContent, never HTML.

const state = { config: null, page: 1, filters: {}, ws: null, retry: 1000 };
const view = () => document.getElementById("view");
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

async function api(path, options = {}) {
  const method = (options.method || "GET").toUpperCase();
  // Ours: no Basic challenge (no browser dialog); a change carries the sign-in's CSRF token.
  const headers = { "X-Requested-With": "XRayVision", ...(options.headers || {}) };
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (response.status === 401 && state.config && path !== "/api/session") {
    showSignIn("Your sign-in has ended (signed out elsewhere, or unused too long): sign in again.");
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function post(path, payload) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" },
                     body: JSON.stringify(payload) });
}

const SCALE = "severity 0-10: 0 normal, 10 life-threatening; at or above the threshold: critical; – not assessed";

function badge(value, label) {
  // Written out ("7/10", "80%") and labelled: never a bare number, never colour alone.
  const severity = label.startsWith("severity");
  const text = value < 0 ? "–" : severity ? `${value}/10` : `${value}%`;
  const span = el("span", { class: "badge", title: severity ? `${label}; ${SCALE}` : label,
    "aria-label": `${label}: ${value < 0 ? "not assessed" : text}` }, text);
  if (severity && value >= 0) {
    const critical = value >= state.config.severity_threshold;
    span.classList.add(critical ? "sev-high" : "sev-low");
    if (critical) span.prepend("⚠ ");
  }
  return span;
}

function throughDay(params) {
  // A "to" date includes that day; the API's until is exclusive: the next day's start.
  if (!params.get("until")) return;
  const next = new Date(`${params.get("until")}T00:00:00Z`);
  next.setUTCDate(next.getUTCDate() + 1);
  params.set("until", next.toISOString().slice(0, 10));
}

function age(birth, at) {
  const b = new Date(birth), t = new Date(at);
  let years = t.getUTCFullYear() - b.getUTCFullYear();
  if (t.getUTCMonth() < b.getUTCMonth() || (t.getUTCMonth() === b.getUTCMonth() && t.getUTCDate() < b.getUTCDate())) years -= 1;
  return years >= 0 ? years : null;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// --- banner and live updates ---------------------------------------------------------

function showDashboard(msg) {
  const endpoints = $("endpoints");
  endpoints.replaceChildren();
  const names = Object.keys(msg.endpoints || {});
  const probes = msg.endpoint_probes || {};
  // a degraded endpoint (it failed its known-answer probes) gets no reads, as a down one
  const degraded = (n) => (probes[n] || {}).probe === "failing";
  const active = names.find((n) => msg.endpoints[n] && !degraded(n));
  for (const name of names) {
    const up = msg.endpoints[name];
    const pill = el("span", { class: "pill " + (up && !degraded(name) ? "on" : "off") },
                    `${name} ${!up ? "down" : degraded(name) ? "degraded" : "up"}`);
    if (name === active && name !== names[0]) pill.classList.add("warn");
    const last = (msg.endpoint_errors || {})[name];
    const notes = [];
    if (degraded(name)) {
      notes.push(`failed its known-answer probes${probes[name].at ? " " + when(probes[name].at) : ""}: ` +
                 probes[name].reason);
    } else if ((probes[name] || {}).probe === "passing") {
      notes.push(`passes its known-answer probes (${when(probes[name].at)})`);
    }
    if (last && last.error) {
      notes.push(`last error${last.error_at ? " " + when(last.error_at) : ""}: ${last.error}`);
    }
    if (notes.length) pill.title = notes.join("\n");
    pill.setAttribute("aria-label", `model ${pill.textContent}${notes.length ? ": " + notes.join("; ") : ""}`);
    endpoints.append(pill);
  }
  if (names.length && active && active !== names[0]) {
    endpoints.append(el("span", { class: "pill warn" }, `failover: ${active} active`));
  }
  if (msg.fhir) {  // the hospital system (radiologists' reports), as the poller found it
    state.fhir = msg.fhir;
    const f = msg.fhir;
    const pill = el("span", { class: "pill " + (f.ok ? "on" : "off") }, f.ok ? "HIS up" : "HIS problem");
    pill.title = f.ok ? `FHIR: last good poll ${f.last_success ? when(f.last_success) : "not yet"}`
      : `FHIR: ${f.warning || f.last_error}${f.last_error_at ? ` (${when(f.last_error_at)})` : ""}` +
        `${f.last_success ? `; last good poll ${when(f.last_success)}` : ""}`;
    pill.setAttribute("aria-label", `hospital system: ${pill.title}`);
    endpoints.append(pill);
  }
  const q = msg.queue || {};
  // counted in the worklist's unit: studies when reads are per study
  $("queue").textContent = `${msg.unit === "study" ? "studies" : "images"}: ` +
    `waiting ${(q.queued || 0) + (q.requeue || 0)} · being read ${q.processing || 0} · ` +
    `read ${q.done || 0} · failed ${q.error || 0}`;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = () => {
    state.retry = 1000; $("live").textContent = "live"; $("live").className = "pill on";
    // Back after an outage (a server restart): what changed meanwhile sent no event here.
    if (state.missed) { state.missed = false; refresh(); }
  };
  ws.onclose = () => {
    state.missed = true;
    $("live").textContent = "offline"; $("live").className = "pill off";
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 30000);
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "dashboard") showDashboard(msg);
    else onEvent(msg);
  };
}

function onEvent(msg) {
  const route = currentRoute();
  // A study's read names the study and the images it covers.
  const uids = [msg.uid, ...(msg.images || [])].filter(Boolean);
  if (route.name === "exams") {
    // New and newly critical exams come first (urgent order): page 1 shows them.
    const critical = msg.type === "report.ready" && msg.severity >= state.config.severity_threshold;
    if ((msg.type === "exam.queued" || critical) && state.page === 1) loadExams(msg.uid);
    else if (uids.some((u) => document.querySelector(`tr[data-uid="${CSS.escape(u)}"]`))) loadExams(msg.uid);
  } else if (route.name === "exam" && uids.includes(route.arg)) {
    loadExam(route.arg);
  }
}

// --- exam list -----------------------------------------------------------------------

const PRIORITY = { 0: "routine", 1: "urgent", 2: "asap", 3: "stat" };

function examsHash(params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== undefined));
  return `#/exams${[...query].length ? `?${query}` : ""}`;
}

function renderExams(query = new URLSearchParams()) {
  state.listHash = location.hash || "#/exams";
  // The list's filters, order, size and page live in the address: a reload or a link
  // shows the same list, and Back returns to the previous one.
  state.filters = Object.fromEntries([...query].filter(([k]) => k !== "page"));
  state.page = Math.max(1, parseInt(query.get("page") || "1", 10) || 1);
  view().replaceChildren($("tpl-exams").content.cloneNode(true));
  const form = $("filters");
  for (const s of state.config.statuses) form.status.append(el("option", { value: s }, s));
  for (const r of state.config.regions) form.region.append(el("option", { value: r }, r));
  const sizes = [...form.size.options].map((o) => o.value);
  if (!sizes.includes(String(state.config.page_size))) form.size.append(el("option", {}, String(state.config.page_size)));
  form.size.value = String(state.config.page_size);
  for (const [k, v] of Object.entries(state.filters)) {
    if (form[k]?.type === "checkbox") form[k].checked = v === "true";
    else if (form[k]) form[k].value = v;
  }
  form.onsubmit = (e) => {
    e.preventDefault();
    const chosen = Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== ""));
    if (chosen.size === String(state.config.page_size)) delete chosen.size;
    location.hash = examsHash(chosen);  // page 1 of the new list
  };
  // A column header orders by its column (again: back to urgent first); a button inside
  // it, so that the keyboard reaches it too.
  const sort = state.filters.sort || "urgent";
  for (const th of document.querySelectorAll("th[data-sort]")) {
    const active = sort === th.dataset.sort;
    th.setAttribute("aria-sort", active ? "descending" : "none");
    const button = el("button", { type: "button", class: "sort" }, th.textContent, active ? " ▼" : "");
    button.onclick = () => {
      location.hash = examsHash({ ...state.filters, sort: active ? "" : th.dataset.sort });
    };
    th.replaceChildren(button);
  }
  const go = (page) => { location.hash = examsHash({ ...state.filters, page: page > 1 ? page : "" }); };
  $("prev").onclick = () => { if (state.page > 1) go(state.page - 1); };
  $("next").onclick = () => { if (state.page < (state.pages || 1)) go(state.page + 1); };
  loadExams();
}

function emptyList(studies) {
  const filtered = Object.keys(state.filters).some((k) => k !== "size" && k !== "sort");
  if (filtered) return `No ${studies ? "studies" : "exams"} match these filters.`;
  const d = state.config.dicom;
  return `No ${studies ? "studies" : "exams"} yet. Send images over DICOM to AE title ` +
    `${d.ae_title}, port ${d.port} of ${location.hostname} (for example: storescu -aec ` +
    `${d.ae_title} ${location.hostname} ${d.port} image.dcm).`;
}

async function loadExams(flashUid) {
  const studies = state.config.read_per === "study";
  const params = new URLSearchParams({ ...state.filters, page: state.page });
  throughDay(params);
  if (studies) params.delete("agreement");  // compared per image only
  let data;
  try {
    data = await api(`/api/${studies ? "studies" : "exams"}?${params}`);
  } catch (err) {
    $("exam-rows")?.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "error" }, err.message)));
    return;
  }
  const rows = $("exam-rows");
  if (!rows) return;
  state.pages = data.pages;
  if (data.page > data.pages) {  // the list shrank under us: its last page instead
    state.page = data.pages;
    history.replaceState(null, "", examsHash({ ...state.filters, page: data.pages > 1 ? data.pages : "" }));
    return loadExams(flashUid);
  }
  const items = studies ? data.studies : data.exams;
  if (!items.length) {
    rows.replaceChildren(el("tr", {}, el("td", { colspan: 8, class: "empty" }, emptyList(studies))));
  } else rows.replaceChildren(...items.map((e) => {
    // in words, with the reason and its code in the tooltip
    const STATUS = { ignore: "not read", error: "read failed" };
    const status = e.reason ? el("span", { title: `${e.reason} (${e.status}: ${e.reason_code})` },
      `${STATUS[e.status] || e.status}: ${e.reason_code.replaceAll("_", " ")}`) : e.status;
    const what = studies
      ? `${e.regions.join(", ") || "unknown"} · ${e.views.join(", ") || "views unknown"} (${e.images} image${e.images === 1 ? "" : "s"})`
      : e.study_size > 1 ? `${e.region} · ${e.projection || "image"} (study of ${e.study_size})` : e.region;
    const tr = el("tr", { dataset: { uid: e.uid } },
      el("td", {}, ...(e.critical_unreviewed ? [el("span", { class: "crit" }, "⚠ critical"), " "] : []),
        when(e.created)),
      el("td", {}, PRIORITY[e.priority] || String(e.priority)),
      el("td", {}, e.patient ? `${e.patient.name || ""} ${e.patient.cnp || ""}`.trim() : ""),
      el("td", {}, what),
      el("td", {}, status),
      el("td", {}, e.ai ? badge(e.ai.severity, "severity (AI)") : ""),
      el("td", {}, e.rad ? badge(e.rad.severity, "severity (radiologist)") : ""),
      el("td", {}, e.ai ? e.ai.summary : ""));
    if (e.critical_unreviewed) tr.classList.add("critical");
    if (e.uid === flashUid) tr.classList.add("flash");
    const page = studies ? e.first_image : e.uid;
    tr.onclick = () => { location.hash = `#/exam/${page}`; };
    // The keyboard alone works the list: Tab or arrows move between rows, Enter opens one.
    tr.tabIndex = 0;
    tr.setAttribute("aria-label", `open ${studies ? "study" : "exam"}: ${what}, ${status.textContent || status}`);
    tr.onkeydown = (ev) => {
      if (ev.key === "Enter") tr.onclick();
      else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        (ev.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling)?.focus();
      }
    };
    return tr;
  }));
  const unit = studies ? (data.total === 1 ? "study" : "studies") : (data.total === 1 ? "exam" : "exams");
  $("page-info").textContent = `page ${data.page} of ${data.pages} · ${data.total} ${unit}`;
  $("prev").disabled = data.page <= 1;
  $("next").disabled = data.page >= data.pages;
  $("list-unit").textContent = studies ? "Study" : "Region";
  $("agreement-filter").style.display = studies ? "none" : "";
}

// --- one exam ------------------------------------------------------------------------

// Window (width) and level (centre) on the rendered PNG's grey values 0-255, by the
// DICOM linear VOI function (PS3.3 C.11.2.1.2.1): values below the window are black,
// above it white, inside it spread over the whole grey scale; 128/256 leaves the image
// as rendered. Presets are ranges of that rendering, not Hounsfield units.
function windowLut(level, width, invert) {
  const lut = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) {
    const out = Math.round(((v - (level - 0.5)) / (width - 1) + 0.5) * 255);
    lut[v] = invert ? 255 - Math.min(255, Math.max(0, out)) : out;
  }
  return lut;
}

function setupViewer() {
  const box = $("image-box"), canvas = $("xray"), ctx = canvas.getContext("2d", { willReadFrequently: true });
  const t = { scale: 1, x: 0, y: 0 };
  let source = null, pending = false;
  const place = () => { canvas.style.transform = `translate(${t.x}px, ${t.y}px) scale(${t.scale})`; };
  const paint = () => {
    pending = false;
    if (!source) return;
    const level = Number($("wl-level").value), width = Number($("wl-width").value);
    const lut = windowLut(level, width, $("wl-invert").checked);
    const out = new ImageData(source.width, source.height), src = source.data, dst = out.data;
    for (let i = 0; i < src.length; i += 4) {
      dst[i] = lut[src[i]]; dst[i + 1] = lut[src[i + 1]]; dst[i + 2] = lut[src[i + 2]]; dst[i + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
    $("wl-value").textContent = `L ${level} W ${width}`;
    canvas.dataset.window = `${level}/${width}${$("wl-invert").checked ? "/inverted" : ""}`;
  };
  const repaint = () => { if (!pending) { pending = true; requestAnimationFrame(paint); } };
  const setWindow = (level, width) => {
    $("wl-level").value = Math.round(level); $("wl-width").value = Math.round(width);
    const preset = `${$("wl-level").value}/${$("wl-width").value}`;
    $("wl-preset").value = [...$("wl-preset").options].some((o) => o.value === preset) ? preset : "";
    repaint();
  };
  const fit = () => {
    if (!source) return;
    t.scale = Math.min(box.clientWidth / canvas.width, box.clientHeight / canvas.height);
    t.x = (box.clientWidth - canvas.width * t.scale) / 2; t.y = 0; place();
  };
  const zoom = (factor, cx = box.clientWidth / 2, cy = box.clientHeight / 2) => {
    t.x = cx - (cx - t.x) * factor; t.y = cy - (cy - t.y) * factor; t.scale *= factor; place();
  };
  new ResizeObserver(fit).observe(box);  // a narrower window: the image fits it again
  box.onwheel = (e) => {
    e.preventDefault();
    const r = box.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - r.left, e.clientY - r.top);
  };
  // Left drag pans; right drag (or shift + drag) sets the window as in PACS viewers:
  // left/right narrows/widens it, up/down brightens/darkens (lowers/raises the level).
  let drag = null;
  box.oncontextmenu = (e) => e.preventDefault();
  box.onpointerdown = (e) => {
    drag = e.button === 2 || e.shiftKey
      ? { wl: true, x: e.clientX, y: e.clientY, level: Number($("wl-level").value), width: Number($("wl-width").value) }
      : { x: e.clientX - t.x, y: e.clientY - t.y };
    box.setPointerCapture(e.pointerId);
  };
  box.onpointermove = (e) => {
    if (!drag) return;
    if (drag.wl) {
      setWindow(Math.min(255, Math.max(0, drag.level + (e.clientY - drag.y) / 2)),
        Math.min(512, Math.max(2, drag.width + (e.clientX - drag.x))));
    } else { t.x = e.clientX - drag.x; t.y = e.clientY - drag.y; place(); }
  };
  box.onpointerup = () => { drag = null; };
  $("zoom-in").onclick = () => zoom(1.25);
  $("zoom-out").onclick = () => zoom(0.8);
  $("wl-preset").onchange = () => {
    const [level, width] = $("wl-preset").value.split("/").map(Number);
    if (width) setWindow(level, width);
  };
  $("wl-level").oninput = $("wl-width").oninput = () => setWindow($("wl-level").value, $("wl-width").value);
  $("wl-invert").onchange = repaint;
  $("reset").onclick = () => { $("wl-invert").checked = false; setWindow(128, 256); fit(); };
  return (src) => {
    const img = new Image();
    img.onerror = () => {  // (an exam whose image could not be decoded has none)
      box.replaceChildren(el("p", { class: "muted empty" }, "No image stored for this exam."));
    };
    img.onload = () => {
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      ctx.drawImage(img, 0, 0);
      source = ctx.getImageData(0, 0, canvas.width, canvas.height);
      fit(); paint();
      canvas.dataset.loaded = "true";
    };
    img.src = src;
  };
}

function renderExam(uid) {
  view().replaceChildren($("tpl-exam").content.cloneNode(true));
  $("back").href = state.listHash || "#/exams";  // the list as it was: filters and page
  setupViewer()(`/api/images/${encodeURIComponent(uid)}`);
  const form = $("review");
  form.onsubmit = async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    try {
      await post("/api/rad_review", { uid, correct: data.get("correct") === "true", note: data.get("note") || "" });
      $("review-result").textContent = "saved";
      loadExam(uid);
    } catch (err) { $("review-result").textContent = err.message; }
  };
  for (const r of state.config.regions) $("requeue-region").append(el("option", { value: r }, r));
  // Asked once more in the page (no browser dialog): a new read replaces the current one
  // as what the list shows; the current read and its review stay in the history.
  $("requeue").onclick = () => { $("requeue-ask").hidden = false; $("requeue").hidden = true; };
  $("requeue-no").onclick = () => { $("requeue-ask").hidden = true; $("requeue").hidden = false; };
  $("requeue-yes").onclick = async () => {
    $("requeue-ask").hidden = true; $("requeue").hidden = false;
    const region = $("requeue-region").value;
    try {
      await post("/api/requeue", region ? { uid, region } : { uid });
      $("requeue-result").textContent = "requeued"; loadExam(uid);
    } catch (err) { $("requeue-result").textContent = err.message; }
  };
  loadExam(uid);
}

async function loadExam(uid) {
  let e;
  try { e = await api(`/api/exams/${encodeURIComponent(uid)}`); }
  catch (err) { $("exam-title").textContent = err.message; return; }
  if (!$("exam-title")) return;
  const who = e.patient ? `${e.patient.name || ""} ${e.patient.cnp || ""}`.trim() : "unknown patient";
  $("exam-title").textContent = `${e.region || "unknown region"} ${e.projection || ""} · ${who} · ${when(e.created)} · ${e.status}`;
  const acquired = e.series_datetime || e.created;
  const years = e.patient && e.patient.birth_date ? age(e.patient.birth_date, acquired) : null;
  const sex = { F: "female", M: "male", O: "other" }[e.patient?.sex] || "";
  const context = [
    ["Accession", e.accession], ["Study", e.study_description], ["Modality", e.modality],
    ["Patient", [sex, years === null ? "" : `${years} years`].filter(Boolean).join(", ")],
    ["Acquired", e.series_datetime ? when(e.series_datetime) : ""], ["Received", when(e.created)],
    ["Priority", PRIORITY[e.priority] || String(e.priority)], ["Sent by", e.calling_aet]];
  $("exam-context").replaceChildren(...context.filter(([, v]) => v)
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const template = state.config.viewer_url;
  $("viewer-link").hidden = !template;
  if (template) {
    const values = { study_uid: e.study_uid || e.uid, series_uid: e.series_uid || "",
      uid: e.uid, accession: e.accession || "" };
    $("viewer").href = template.replace(/\{(study_uid|series_uid|uid|accession)\}/g,
      (_, name) => encodeURIComponent(values[name]));
  }
  const images = e.study_images || [];
  $("study-images").replaceChildren(...(images.length > 1 ? [
    el("span", { class: "muted" }, `study: ${images.length} images`),
    ...images.map((i, n) => {
      const label = `${n + 1}. ${i.projection || i.series_description || "image"}` +
        (i.severity >= 0 ? ` (${i.severity})` : ` · ${i.status}`);
      // a thumbnail of each image (the PNG, scaled by the browser; cached a day)
      const thumb = el("img", { class: "thumb", alt: label, loading: "lazy",
        src: `/api/images/${encodeURIComponent(i.uid)}` });
      return i.uid === e.uid ? el("span", { class: "current", "aria-current": "true" }, thumb, el("strong", {}, label))
        : el("a", { href: `#/exam/${encodeURIComponent(i.uid)}` }, thumb, label);
    })] : []));
  const ai = e.ai, rad = e.rad;
  // A new read arrived while a review was being written: say so, the verdict would apply
  // to the new read (the one shown now), not to the one the user was looking at.
  const shown = state.shownRead;
  const version = ai ? ai.version : 0;
  const form = $("review");
  const dirty = form && (form.note.value.trim() !== "" || [...form.correct].some((r) => r.checked));
  if (shown && shown.uid === uid && shown.version !== version && dirty) {
    $("review-result").textContent = `A new AI read (version ${version}) arrived while you ` +
      "were writing: your review would apply to it. Read it again before saving.";
  }
  // The same for a requeue being confirmed: what it would replace is not what was asked.
  if (shown && shown.uid === uid && !$("requeue-ask").hidden &&
      (shown.version !== version || shown.status !== e.status)) {
    $("requeue-result").textContent = `This changed while you were deciding (now ${e.status}` +
      `${ai ? `, AI read version ${version}` : ""}): look at it again before requeueing.`;
  }
  state.shownRead = { uid, version, status: e.status };
  $("ai-badges").replaceChildren(...(ai ? [
    el("span", { class: "muted" }, "severity "), badge(ai.severity, "severity (AI)"),
    el("span", { class: "muted" }, " confidence "), badge(ai.confidence, "confidence")] : []));
  // Why the AI did not read it, and what the user can do, in words (the code in the tooltip)
  const canRequeue = state.config.can.requeue;
  const REASON = {
    ignore: ["Not sent to the AI: ", canRequeue ? " To have it read, choose its region under " +
      "\u201cRead as\u201d and requeue it." : ""],
    error: ["The AI read failed: ", canRequeue ? " Requeue it to try again." : ""] };
  const [lead, action] = REASON[e.status] || ["", ""];
  $("exam-reason").hidden = !e.reason;
  $("exam-reason").textContent = e.reason ? `${lead}${e.reason}.${action}`.replace("..", ".") : "";
  $("exam-reason").title = e.reason_code ? `${e.status}: ${e.reason_code}` : "";
  $("ai-text").textContent = ai ? ai.text : { ignore: "The AI does not read this image (why: above).",
    error: "No AI report: the read failed (why: above)." }[e.status] || "no AI report yet";
  // no region of its own: a requeue must name one
  $("requeue-region").options[0].textContent = e.region ? "its region" : "choose a region";
  $("ai-summary").textContent = ai ? ai.summary : "";
  $("ai-version").textContent = ai
    ? `${ai.of === "study" ? `read of the study (${images.length || 1} images) · ` : ""}` +
      `version ${ai.version} · ${ai.model} (${ai.endpoint}) · ${when(ai.created)}` : "";
  const h = e.history || { versions: [], reviews: [] };
  $("history").hidden = !h.versions.length && !h.reviews.length;
  $("history-versions").replaceChildren(...h.versions.map((v) => el("li", {},
    el("p", { class: "muted" }, `version ${v.version} · severity ${v.severity} · ${v.model} · ` +
      `${when(v.created)} · replaced ${when(v.superseded)}` +
      (v.review_correct >= 0 ? ` · reviewed ${v.review_correct ? "correct" : "incorrect"} by ${v.reviewed_by}` : "")),
    el("pre", {}, v.text))));
  $("history-reviews").replaceChildren(...h.reviews.map((r) => el("li", {},
    `version ${r.version}: ${r.correct ? "correct" : "incorrect"} · ${r.by} · ${when(r.at)}` +
      (r.note ? ` · ${r.note}` : ""))));
  const radHistory = e.rad_history || [];
  const ENDED = { replaced: "replaced by a later version",
    "entered-in-error": "withdrawn by the hospital system (entered in error)",
    cancelled: "withdrawn by the hospital system (cancelled)" };
  $("rad-history").hidden = !radHistory.length;
  $("rad-history-versions").replaceChildren(...radHistory.map((v) => el("li", {},
    el("p", { class: "muted" }, `${v.status} · ${v.radiologist || "radiologist not named"} · ` +
      `severity ${v.severity} · stored ${when(v.stored)} · ${ENDED[v.ended_by] || v.ended_by} ${when(v.ended)}`),
    el("pre", {}, v.text))));
  $("rad-badges").replaceChildren(...(rad ? [
    el("span", { class: "muted" }, "severity "), badge(rad.severity, "severity (radiologist)")] : []));
  $("rad-name").textContent = rad ? rad.radiologist : "";
  const last = radHistory[radHistory.length - 1];
  $("rad-text").textContent = rad ? rad.text : last && last.ended_by !== "replaced"
    ? `The hospital system withdrew the radiologist's report (${last.ended_by}); none now.`
    : "no radiologist report yet" + (state.fhir && !state.fhir.ok
      ? ` (the hospital system is not answering as it should: ${state.fhir.warning || state.fhir.last_error})` : "");
  $("rad-en").textContent = rad ? rad.text_en : "";
  $("rad-en-head").hidden = !(rad && rad.text_en);  // no translation: no empty heading
  $("review").hidden = !(ai && state.config.can.review);
  $("review-state").textContent = ai && ai.reviewed
    ? `reviewed ${ai.review_correct === 1 ? "correct" : "incorrect"} by ${ai.reviewed_by}: ${ai.review_note}` : "";
  $("requeue-box").hidden = !state.config.can.requeue;
}

// --- statistics ----------------------------------------------------------------------

function svgEl(tag, attrs = {}, text = "") {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

function bars(container, labels, series, { xTitle = "", yTitle = "count", empty = "nothing yet", totals = true, data = null } = {}) {
  // A bar chart with its axes, their titles, values on the bars and a legend (with each
  // series' total when it is a count); an empty one says so instead of drawing a flat line.
  // (``data``: whether there is any, where zero is a value, e.g. seconds)
  if (!labels.length || !(data ?? series.some((s) => s.values.some((v) => v > 0)))) {
    container.replaceChildren(el("p", { class: "muted empty" }, empty));
    return;
  }
  const left = 36, bottom = 190, top = 14, width = 360;
  const svg = svgEl("svg", { viewBox: "0 0 400 232", role: "img",
    "aria-label": `${series.map((s) => s.name).join(" and ")} by ${xTitle || "day"}` });
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  for (const tick of [0, Math.ceil(max / 2), max]) {  // y axis: 0, half, top
    const y = bottom - (tick / max) * (bottom - top);
    svg.append(svgEl("line", { x1: left, x2: left + width, y1: y, y2: y, class: "grid" }),
      svgEl("text", { x: left - 4, y: y + 3, "text-anchor": "end" }, String(tick)));
  }
  svg.append(svgEl("text", { x: 10, y: (top + bottom) / 2, transform: `rotate(-90 10 ${(top + bottom) / 2})`,
    "text-anchor": "middle" }, yTitle));
  const slot = width / Math.max(1, labels.length), w = slot / (series.length + 0.5);
  labels.forEach((label, i) => {
    series.forEach((s, k) => {
      const v = s.values[i], h = (v / max) * (bottom - top), x = left + i * slot + k * w + w * 0.25;
      const rect = svgEl("rect", { x, y: bottom - h, width: w * 0.9, height: h, class: s.cls });
      rect.append(svgEl("title", {}, `${s.name}, ${xTitle} ${label}: ${v}`));
      svg.append(rect);
      if (v > 0 && labels.length <= 16) {
        svg.append(svgEl("text", { x: x + w * 0.45, y: bottom - h - 2, "text-anchor": "middle", class: "value" }, String(v)));
      }
    });
    if (labels.length <= 31) {
      svg.append(svgEl("text", { x: left + i * slot + slot / 2, y: bottom + 13, "text-anchor": "middle" }, label));
    }
  });
  svg.append(svgEl("line", { x1: left, x2: left + width, y1: bottom, y2: bottom, class: "axis" }),
    svgEl("text", { x: left + width / 2, y: 228, "text-anchor": "middle" }, xTitle));
  const legend = el("p", { class: "legend" }, ...series.map((s) =>
    el("span", {}, el("span", { class: `swatch ${s.cls}` }), totals ? ` ${s.name} (${s.values.reduce((a, b) => a + b, 0)})` : ` ${s.name}`)));
  container.replaceChildren(svg, legend);
}

function keyValues(target, rows) {
  target.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function pct(v) { return v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`; }

function agreementRow(name, count, a) {
  return el("tr", {}, el("td", {}, name || "(none)"), el("td", {}, count), el("td", {}, a.tp),
    el("td", {}, a.tn), el("td", {}, a.fp), el("td", {}, a.fn), el("td", {}, a.not_assessed),
    el("td", {}, pct(a.sensitivity)), el("td", {}, pct(a.specificity)));
}

function agreementTable(table, label, rows) {
  const head = el("tr", {}, ...[label, "n", "TP", "TN", "FP", "FN", "n/a", "sens.", "spec."].map((h) => el("th", {}, h)));
  const none = el("tr", {}, el("td", { colspan: 9, class: "muted" }, "Nothing to compare yet."));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...(rows.length ? rows : [none])));
}

// Shadow models: judged on this site's studies before promotion, never shown as the AI read.
function shadowTable(table, rows) {
  const agree = (a) => (a.assessed ? pct((a.tp + a.tn) / a.assessed) : "–");
  const head = el("tr", {}, ...["shadow model", "reads", "agrees with radiologists", "sens.", "spec.",
    "live model with radiologists, same studies", "agrees with the live model"].map((h) => el("th", {}, h)));
  const body = rows.map((x) => el("tr", {}, el("td", {}, x.model), el("td", {}, x.reads),
    el("td", {}, `${agree(x.radiologist)} of ${x.radiologist.assessed}`),
    el("td", {}, pct(x.radiologist.sensitivity)), el("td", {}, pct(x.radiologist.specificity)),
    el("td", {}, `${agree(x.live_radiologist)} of ${x.live_radiologist.assessed}`),
    el("td", {}, `${agree(x.live)} of ${x.live.assessed}`)));
  const none = el("tr", {}, el("td", { colspan: 7, class: "muted" },
    "No shadow model ([ai] shadow_url) has read anything in this window."));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...(body.length ? body : [none])));
}

async function renderStats() {
  view().replaceChildren($("tpl-stats").content.cloneNode(true));
  try {
    // one response, one database snapshot: no figure on the page older than another
    const { global: g, regional, radiologists: rads, timeline, insights, models, turnaround } =
      await api("/api/stats/summary?period=day");
    const sev = [...Array(12).keys()].map((i) => String(i - 1));
    bars($("chart-severity"), sev.map((s) => (s === "-1" ? "–" : s)), [
      { name: "AI", cls: "ai", values: sev.map((s) => g.severity.ai[s] || 0) },
      { name: "radiologist", cls: "rad", values: sev.map((s) => g.severity.rad[s] || 0) }],
    { xTitle: "severity (– not assessed)", yTitle: state.config.read_per === "study" ? "studies" : "exams",
      empty: "No AI reads or radiologist reports yet." });
    const st = g.study_statuses || g.statuses;
    $("queue-head").textContent = g.study_statuses ? "Queue (studies)" : "Queue (images)";
    keyValues($("queue-counts"), [["waiting", st.queued + st.requeue], ["being read", st.processing],
      ["read", st.done], ["ignored (no region)", st.ignore], ["failed (error)", st.error],
      ["converting", st.none]]);
    const r = g.reviews, reviewed = r.correct + r.incorrect;
    keyValues($("review-counts"), [["correct", r.correct], ["incorrect", r.incorrect],
      ["not reviewed", r.not_reviewed],
      ["reviewers agree with the AI", reviewed ? pct(r.correct / reviewed) : "–"]]);
    const endpoints = Object.entries(g.model);
    $("latency").replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "endpoint"),
      el("th", {}, "reads"), el("th", {}, "average seconds"))), el("tbody", {}, ...(endpoints.length
      ? endpoints.map(([name, m]) => el("tr", {}, el("td", {}, name || "(none)"), el("td", {}, m.reports),
        el("td", {}, m.avg_seconds.toFixed(2))))
      : [el("tr", {}, el("td", { colspan: 3, class: "muted" }, "No AI reads yet."))])));
    const missed = insights.most_missed_regions;
    $("insights").replaceChildren(...(missed.length
      ? missed.map((m) => el("li", {}, `${m.region}: ${m.false_negatives} missed by the AI ` +
        `(sensitivity ${pct(m.sensitivity)})`))
      : [el("li", { class: "muted" }, "No findings the AI missed (against the radiologists' reports).")]));
    const a = g.agreement;
    $("matrix").replaceChildren(
      el("tr", {}, el("th", {}, ""), el("th", {}, "radiologist +"), el("th", {}, "radiologist −")),
      el("tr", {}, el("th", {}, "AI +"), el("td", {}, a.tp), el("td", {}, a.fp)),
      el("tr", {}, el("th", {}, "AI −"), el("td", {}, a.fn), el("td", {}, a.tn)));
    keyValues($("ratios"), [["threshold", g.threshold], ["sensitivity", pct(a.sensitivity)],
      ["specificity", pct(a.specificity)], ["PPV", pct(a.ppv)], ["NPV", pct(a.npv)],
      ["F1", pct(a.f1)], ["not assessed", a.not_assessed]]);
    const days = timeline.timeline.slice(-31);
    bars($("chart-throughput"), days.map((d) => d.start.slice(5)), [
      { name: "received", cls: "received", values: days.map((d) => d.received) },
      { name: "reported", cls: "reported", values: days.map((d) => d.reported) }],
    { xTitle: "day (UTC, last 31)", yTitle: "images", empty: "Nothing received yet." });
    agreementTable($("per-region"), "region", regional.regions.map((x) => agreementRow(x.region, x.exams, x.agreement)));
    agreementTable($("per-radiologist"), "radiologist", rads.radiologists.map((x) => agreementRow(x.radiologist, x.reports, x.agreement)));
    agreementTable($("per-model"), "model", models.models.map((x) => agreementRow(x.model, x.reads, x.agreement)));
    shadowTable($("per-shadow"), models.shadow || []);
    // minutes, or seconds while every day's 90th percentile is under two minutes
    const inMinutes = turnaround.days.some((d) => d.p90_seconds >= 120);
    const scaled = (s) => Math.round((inMinutes ? s / 60 : s) * 10) / 10;
    bars($("chart-turnaround"), turnaround.days.map((d) => d.day.slice(5)), [
      { name: "median", cls: "received", values: turnaround.days.map((d) => scaled(d.p50_seconds)) },
      { name: "90th percentile", cls: "reported", values: turnaround.days.map((d) => scaled(d.p90_seconds)) }],
    { xTitle: `day of receipt (UTC, last 31), receipt to first AI read of each ${turnaround.unit}`,
      yTitle: inMinutes ? "minutes" : "seconds", totals: false, data: turnaround.days.length > 0,
      empty: "No AI reads in the last 31 days." });
  } catch (err) {
    view().append(el("p", { class: "error" }, err.message));
  }
}

// --- admin ---------------------------------------------------------------------------

async function renderAdmin() {
  view().replaceChildren($("tpl-admin").content.cloneNode(true));
  try {
    const { users } = await api("/api/admin/users");
    $("users").replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "user"), el("th", {}, "role"))),
      el("tbody", {}, ...users.map((u) => el("tr", {}, el("td", {}, u.username), el("td", {}, u.role)))));
  } catch (err) { $("users").replaceChildren(el("caption", { class: "error" }, err.message)); }
  try {
    const { reports } = await api("/api/admin/fhir/unlinked");
    $("unlinked").replaceChildren(el("thead", {}, el("tr", {}, ...["report", "patient",
      "accession", "why", "report date", "last seen"].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...(reports.length ? reports.map((r) => el("tr", {}, el("td", {}, r.fhir_id),
      el("td", {}, r.patient), el("td", {}, r.accessions.join(", ") || "–"),
      el("td", {}, `${r.rule === "ambiguous" ? "ambiguous: " : ""}${r.reason}`),
      el("td", {}, r.effective ? when(r.effective) : "–"), el("td", {}, when(r.last_seen))))
      : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "None: every report found is linked."))])));
  } catch (err) { $("unlinked").replaceChildren(el("caption", { class: "error" }, err.message)); }
  renderResults();
  const form = $("audit-filters");
  let filters = {};
  const load = async (before) => {
    const params = new URLSearchParams(filters);
    throughDay(params);
    if (before) params.set("before", before);
    let page;
    try { page = await api(`/api/admin/audit?${params}`); }
    catch (err) { $("audit").replaceChildren(el("caption", { class: "error" }, err.message)); return; }
    const rows = page.entries.map((e) => el("tr", { dataset: { id: e.id } }, el("td", {}, when(e.at)),
      el("td", {}, e.user), el("td", {}, e.action), el("td", {}, e.target), el("td", {}, e.remote),
      el("td", {}, e.detail)));
    const body = before ? $("audit").querySelector("tbody") : el("tbody");
    if (!before) {
      $("audit").replaceChildren(el("thead", {}, el("tr", {}, ...["when", "user", "action", "target",
        "from", "detail"].map((h) => el("th", {}, h)))), body);
    }
    body.append(...rows);
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No entries.")));
    const more = $("audit-more");
    more.hidden = !page.more;
    more.onclick = () => load(page.entries[page.entries.length - 1].id);
  };
  form.onsubmit = (e) => {
    e.preventDefault();
    filters = Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== ""));
    load();
  };
  load();
}

const DESTINATION = { dicom: "PACS (DICOM SR)", fhir: "hospital system (FHIR)" };

async function renderResults() {
  let outbox;
  try { outbox = await api("/api/admin/results"); }
  catch (err) { $("results").replaceChildren(el("caption", { class: "error" }, err.message)); return; }
  $("results-depth").replaceChildren(...(outbox.destinations.length ? outbox.destinations.flatMap((d) => [
    el("dt", {}, DESTINATION[d.destination]),
    el("dd", {}, `${d.pending} waiting${d.oldest_pending ? ` (oldest ${when(d.oldest_pending)})` : ""}, ` +
      `${d.dead} given up`)]) : [el("dt", {}, "Destinations"), el("dd", {}, "none set: AI reads stay here")]));
  const action = (r) => {
    if (r.status !== "dead") return "";
    const button = el("button", { type: "button" }, "Send again");
    button.onclick = async () => {
      button.disabled = true;
      try { await api(`/api/admin/results/${r.id}/resend`, { method: "POST" }); renderResults(); }
      catch (err) { button.replaceWith(el("span", { class: "error" }, err.message)); }
    };
    return button;
  };
  const status = { pending: "waiting", sent: "sent", dead: "given up", superseded: "replaced by a newer one" };
  $("results").replaceChildren(el("thead", {}, el("tr", {}, ...["created", "to", "AI read", "status",
    "tries", "reason", ""].map((h) => el("th", {}, h)))),
  el("tbody", {}, ...(outbox.results.length ? outbox.results.map((r) => el("tr", { dataset: { id: r.id } },
    el("td", {}, when(r.created)), el("td", {}, DESTINATION[r.destination]),
    el("td", {}, `${r.uid} v${r.version}${r.review ? " (review)" : ""}`),
    el("td", {}, status[r.status] || r.status), el("td", {}, String(r.attempts)),
    el("td", {}, r.error || "–"), el("td", {}, action(r))))
    : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "Nothing sent yet."))])));
}

// --- ad-hoc check --------------------------------------------------------------------

function renderCheck() {
  view().replaceChildren($("tpl-check").content.cloneNode(true));
  const form = $("check-form");
  form.onsubmit = async (e) => {
    e.preventDefault();
    const mode = e.submitter ? e.submitter.value : "check";
    const out = $("check-result");
    out.replaceChildren(el("p", { class: "muted" }, "asking the model…"));
    try {
      const result = await post(`/api/${mode}`, { text: form.text.value });
      out.replaceChildren(...Object.entries(result).flatMap(([k, v]) => [el("h4", {}, k), el("pre", {}, v)]));
    } catch (err) { out.replaceChildren(el("p", { class: "error" }, err.message)); }
  };
}

// --- routing -------------------------------------------------------------------------

function currentRoute() {
  const [path, query = ""] = location.hash.split("?");
  const [, name = "exams", arg] = path.split("/");
  return { name: name || "exams", arg: arg ? decodeURIComponent(arg) : undefined,
    query: new URLSearchParams(query) };
}

function route() {
  const r = currentRoute();
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === r.name || (r.name === "exam" && a.dataset.nav === "exams"));
  }
  if (r.name === "exam" && r.arg) renderExam(r.arg);
  else if (r.name === "stats") renderStats();
  else if (r.name === "check") renderCheck();
  else if (r.name === "admin" && state.config.can.admin) renderAdmin();
  else renderExams(r.query);
}

function refresh() {
  const r = currentRoute();
  if (r.name === "exam" && r.arg) loadExam(r.arg);
  else if (r.name === "stats") renderStats();
  else if (r.name !== "check") loadExams();  // (the check page holds what was typed)
}

// --- sign-in ---------------------------------------------------------------------------

function showSignIn(message = "") {
  state.config = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  for (const a of document.querySelectorAll("[data-nav]")) a.hidden = true;
  $("signout").hidden = true;
  $("live").hidden = true;
  $("user").textContent = "";
  view().replaceChildren($("tpl-signin").content.cloneNode(true));
  $("signin-message").textContent = message;
  const form = $("signin");
  form.username.focus();
  form.onsubmit = async (e) => {
    e.preventDefault();
    $("signin-message").textContent = "";
    try {
      const who = await post("/api/session", { username: form.username.value, password: form.password.value });
      state.csrf = who.csrf;
      start();
    } catch (err) {
      form.password.value = "";
      form.password.focus();
      $("signin-message").textContent = err.message.replace(/^\d+: /, "");
    }
  };
}

async function signOut() {
  try { await api("/api/session", { method: "DELETE" }); } catch (err) { /* ended already */ }
  state.csrf = "";
  showSignIn("Signed out.");
}

async function start() {
  try {
    // Signed in? (Asked without a 401, so that a first visit logs no error; the browser
    // signs in by the page, HTTP Basic is for API clients.)
    const who = await api("/api/session");
    if (!who.user) { showSignIn(); return; }
    state.config = await api("/api/config");
    state.fhir = state.config.fhir;
  } catch (err) {
    if (err.message.startsWith("401")) { showSignIn(); return; }
    const retry = el("button", { type: "button" }, "Try again");
    retry.onclick = () => start();
    view().replaceChildren(el("p", { class: "error" }, `cannot load the configuration: ${err.message}`), retry);
    return;
  }
  state.csrf = state.config.csrf || state.csrf || "";
  $("user").textContent = `${state.config.user} (${state.config.role})`;
  $("live").hidden = false;
  for (const a of document.querySelectorAll("[data-nav]")) a.hidden = false;
  if (!state.config.can.check) document.querySelector('[data-nav="check"]').hidden = true;
  document.querySelector('[data-nav="admin"]').hidden = !state.config.can.admin;
  $("signout").hidden = !state.config.csrf;  // signed in by the page (HTTP Basic cannot sign out)
  $("signout").onclick = signOut;
  if (!state.started) {
    state.started = true;
    window.addEventListener("hashchange", () => { if (state.config) route(); });
  }
  route();
  connect();
}

start();
