"""The REST API against the real app on SQLite and PostgreSQL."""

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select, update

from support import records
from web.conftest import basic
from xrayvision.db import queue, repo
from xrayvision.db.models import DONE, PROCESSING, QUEUED, AuditLog, Exam
from xrayvision.db.repo import ExamInfo, PatientInfo
from xrayvision.events import ENDPOINT_HEALTH
from xrayvision.web.api import load_spec
from xrayvision.web.context import SETTINGS

PNG = b"\x89PNG\r\n\x1a\n image"

# (method, path, body, permission): every route of the API.
ROUTES = [
    ("GET", "/api/exams", None, "read"),
    ("GET", "/api/exams/1.2.3.1", None, "read"),
    ("GET", "/api/studies", None, "read"),
    ("GET", "/api/images/1.2.3.1", None, "read"),
    ("GET", "/api/stats/global", None, "read"),
    ("GET", "/api/stats/regional", None, "read"),
    ("GET", "/api/stats/radiologists", None, "read"),
    ("GET", "/api/stats/insights", None, "read"),
    ("GET", "/api/stats/timeline", None, "read"),
    ("GET", "/api/stats/models", None, "read"),
    ("GET", "/api/stats/turnaround", None, "read"),
    ("GET", "/api/stats/summary", None, "read"),
    ("POST", "/api/check", {"text": "Pneumonie"}, "check"),
    ("POST", "/api/analyse", {"text": "Pneumonie"}, "check"),
    ("POST", "/api/rad_review", {"uid": "1.2.3.1", "correct": True, "note": "ok"}, "review"),
    ("POST", "/api/requeue", {"uid": "1.2.3.2"}, "requeue"),
    ("GET", "/api/config", None, "read"),
    ("GET", "/api/spec", None, "read"),
    ("GET", "/api/admin/users", None, "admin"),
    ("GET", "/api/admin/audit", None, "admin"),
    ("GET", "/api/admin/fhir/unlinked", None, "admin"),
    ("GET", "/api/admin/results", None, "admin"),
]
RIGHTS = {"admin": {"read", "check", "review", "requeue", "admin"},
          "rad": {"read", "check", "review", "requeue"},
          "viewer": {"read"}}


def seed(db, store=None):
    """Two patients, four exams: done with both reports, done with AI only, queued, error."""
    t0 = dt.datetime(2026, 11, 20, 8, tzinfo=dt.UTC)
    rows = [("1.2.3.1", DONE, "chest", "111", "Popescu^Ion", 7, 8, "Dr. A"),
            ("1.2.3.2", DONE, "leg", "111", "Popescu^Ion", 2, None, None),
            ("1.2.3.3", QUEUED, "chest", "222", "Ionescu^Ana", None, None, None),
            ("1.2.3.4", "error", "chest", "222", "Ionescu^Ana", None, None, None)]
    for i, (uid, status, region, cnp, name, ai, rad, radiologist) in enumerate(rows):
        db.write_sync(records.add_exam, ExamInfo(uid=uid, region=region, status=status,
                                                 modality="DX", accession=f"A{i + 1}"),
                      PatientInfo(cnp=cnp, name=name))
        db.write_sync(lambda s, uid=uid, i=i: s.execute(
            update(Exam).where(Exam.uid == uid).values(created=t0 + dt.timedelta(days=i))))
        if ai is not None:
            db.write_sync(records.save_ai_report, uid, text="FINDINGS: x\nIMPRESSION: y",
                          severity=ai, positive=int(ai >= 5), summary=f"summary {uid}",
                          endpoint="primary", latency=1.5)
        if rad is not None:
            db.write_sync(repo.save_rad_report, uid, text="Pneumonie bazală", severity=rad,
                          radiologist=radiologist, text_en="Basal pneumonia", checked=True)
        if store is not None:
            store.put(uid, "png", PNG)


@pytest.mark.parametrize("method,path,body,permission", ROUTES)
async def test_auth_matrix(api, method, path, body, permission):
    client, services = api
    seed(services.db, services.store)
    resp = await client.request(method, path, json=body)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")
    assert (await resp.json())["error"] == "unauthorized"
    resp = await client.request(method, path, json=body, headers=basic("viewer", "nope"))
    assert resp.status == 401
    for user, rights in RIGHTS.items():
        resp = await client.request(method, path, json=body, headers=basic(user))
        if permission in rights:
            assert resp.status == 200, (user, path, await resp.text())
        else:
            assert resp.status == 403, (user, path)
            assert "may not" in (await resp.json())["detail"]


async def test_open_routes_need_no_auth(api):
    client, _ = api
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200


async def test_exam_list_filters_and_paging(api):
    client, services = api
    seed(services.db)
    h = basic("viewer")

    async def uids(query):
        resp = await client.get(f"/api/exams?{query}", headers=h)
        assert resp.status == 200, await resp.text()
        return [e["uid"] for e in (await resp.json())["exams"]]

    assert await uids("") == ["1.2.3.4", "1.2.3.3", "1.2.3.2", "1.2.3.1"]
    assert await uids("status=done") == ["1.2.3.2", "1.2.3.1"]
    assert await uids("status=queued,error") == ["1.2.3.4", "1.2.3.3"]
    assert await uids("region=leg") == ["1.2.3.2"]
    assert await uids("severity_min=5") == ["1.2.3.1"]
    assert await uids("severity_max=4&severity_min=0") == ["1.2.3.2"]
    assert await uids("positive=1") == ["1.2.3.1"]
    assert await uids("reviewed=false") == ["1.2.3.2", "1.2.3.1"]
    assert await uids("search=Ionescu") == ["1.2.3.4", "1.2.3.3"]
    assert await uids("search=11") == ["1.2.3.2", "1.2.3.1"]
    assert await uids("agreement=TP") == ["1.2.3.1"]
    assert await uids("since=2026-11-21&until=2026-11-23") == ["1.2.3.3", "1.2.3.2"]
    assert await uids("modality=dx") == ["1.2.3.4", "1.2.3.3", "1.2.3.2", "1.2.3.1"]
    assert await uids("modality=CR") == []
    assert await uids("accession=A2") == ["1.2.3.2"]
    page = await (await client.get("/api/exams?size=3&page=2", headers=h)).json()
    assert [e["uid"] for e in page["exams"]] == ["1.2.3.1"]
    assert (page["total"], page["pages"], page["size"]) == (4, 2, 3)


@pytest.mark.parametrize("query,detail", [
    ("status=bogus", "status must be among"), ("size=0", "size must be"),
    ("size=501", "size must be"), ("page=x", "page must be"), ("positive=2", "positive"),
    ("reviewed=maybe", "reviewed must be"), ("since=yesterday", "since must be"),
    ("until=", "until must be"), ("positive=", "positive"), ("reviewed=", "reviewed must be"),
    ("agreement=XX", "agreement must be"),
])
async def test_bad_queries_are_400_with_a_reason(api, query, detail):
    client, _ = api
    resp = await client.get(f"/api/exams?{query}", headers=basic("viewer"))
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "bad_request" and detail in body["detail"]


async def test_exam_detail_and_image(api):
    client, services = api
    seed(services.db, services.store)
    h = basic("viewer")
    exam = await (await client.get("/api/exams/1.2.3.1", headers=h)).json()
    assert exam["ai"]["text"].startswith("FINDINGS") and exam["ai"]["severity"] == 7
    assert exam["rad"]["text"] == "Pneumonie bazală" and exam["rad"]["text_en"] == "Basal pneumonia"
    assert exam["patient"] == {"cnp": "111", "name": "Popescu^Ion", "sex": "",
                               "birth_date": None}
    assert (await client.get("/api/exams/9.9.9", headers=h)).status == 404
    assert (await client.get("/api/exams/not-a-uid", headers=h)).status == 404
    resp = await client.get("/api/images/1.2.3.1", headers=h)
    assert resp.status == 200 and await resp.read() == PNG
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Cache-Control"] == "private, max-age=86400"
    etag = resp.headers["ETag"]
    again = await client.get("/api/images/1.2.3.1", headers={**h, "If-None-Match": etag})
    assert again.status == 304
    assert (await client.get("/api/images/9.9.9", headers=h)).status == 404


async def test_statistics(api):
    client, services = api
    seed(services.db)
    h = basic("viewer")
    g = await (await client.get("/api/stats/global", headers=h)).json()
    assert g["statuses"]["done"] == 2 and g["statuses"]["queued"] == 1
    assert g["severity"]["ai"]["7"] == 1 and g["severity"]["rad"]["8"] == 1
    assert g["agreement"]["tp"] == 1 and g["agreement"]["sensitivity"] == 1.0
    assert g["model"]["primary"] == {"avg_seconds": 1.5, "reports": 2}
    regional = await (await client.get("/api/stats/regional", headers=h)).json()
    assert {r["region"]: r["exams"] for r in regional["regions"]} == {"chest": 3, "leg": 1}
    rads = await (await client.get("/api/stats/radiologists", headers=h)).json()
    assert rads["radiologists"][0]["radiologist"] == "Dr. A"
    timeline = await (await client.get("/api/stats/timeline?period=week", headers=h)).json()
    # Received Fri 20th to Mon 23rd: the Monday starts the next week.
    assert [(t["start"], t["received"], t["reported"], t["agreement"]["tp"])
            for t in timeline["timeline"]] == [("2026-11-16", 3, 2, 1), ("2026-11-23", 1, 0, 0)]
    resp = await client.get("/api/stats/timeline?period=year", headers=h)
    assert resp.status == 400
    insights = await (await client.get("/api/stats/insights", headers=h)).json()
    assert insights["reviews"]["not_reviewed"] == 2
    # the page's one request: every part as its own endpoint says, from one snapshot
    summary = await (await client.get("/api/stats/summary?period=week", headers=h)).json()
    assert summary["global"] == g and summary["regional"] == regional
    assert summary["radiologists"] == rads and summary["timeline"] == timeline
    assert summary["insights"] == insights
    assert summary["models"] == await (await client.get("/api/stats/models",
                                                        headers=h)).json()
    assert (await client.get("/api/stats/summary?period=year", headers=h)).status == 400


async def test_check_and_analyse_use_the_model(api, stub):
    client, _ = api
    h = basic("rad")
    resp = await client.post("/api/check", json={"text": "Pneumonie bazală dreaptă"}, headers=h)
    assert await resp.json() == {"positive": 1, "severity": 6, "confidence": 85,
                                 "summary": "right lower lobe pneumonia"}
    passes = await (await client.post("/api/analyse", json={"text": "x"}, headers=h)).json()
    assert list(passes) == ["overview", "detail", "critique", "assessment"]
    stub.state.mode = "500"
    resp = await client.post("/api/check", json={"text": "x"}, headers=h)
    assert resp.status == 503 and "no model endpoint" in (await resp.json())["detail"]


@pytest.mark.parametrize("body,status,detail", [
    ("not json", 400, "not valid JSON"), ([1, 2], 400, "JSON object"),
    ({"text": ""}, 400, "non-empty"), ({"text": 5}, 400, "non-empty"),
    ({"text": "x" * 20001}, 400, "longer than"),
])
async def test_bad_bodies(api, body, status, detail):
    client, _ = api
    kwargs = {"data": body, "headers": {**basic("rad"), "Content-Type": "application/json"}} \
        if isinstance(body, str) else {"json": body, "headers": basic("rad")}
    resp = await client.post("/api/check", **kwargs)
    assert resp.status == status
    assert detail in (await resp.json())["detail"]


async def test_body_limit_media_type_and_unknown_routes(api):
    client, _ = api
    h = basic("rad")
    resp = await client.post("/api/check", data=b"x" * 300_000,
                             headers={**h, "Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["error"] == "too_large"
    resp = await client.post("/api/check", data="text=x", headers={
        **h, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    resp = await client.get("/api/nothing", headers=h)
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    resp = await client.delete("/api/exams", headers=h)
    assert resp.status == 405 and "GET" in resp.headers["Allow"]


async def test_review_is_stored_audited_and_announced(api):
    client, services = api
    seed(services.db)
    with services.bus.subscribe() as events:
        resp = await client.post("/api/rad_review", headers=basic("rad"),
                                 json={"uid": "1.2.3.1", "correct": False,
                                       "note": "<b>missed</b> effusion"})
        assert resp.status == 200
        event = await asyncio.wait_for(events.get(), 2)
    assert (event.type, event.data) == ("exam.reviewed", {"uid": "1.2.3.1", "correct": False})
    ai = services.db.read_sync(records.get_ai_report, "1.2.3.1")
    assert (ai.reviewed, ai.review_correct, ai.review_note, ai.reviewed_by) == (
        True, 0, "<b>missed</b> effusion", "rad")
    audits = services.db.read_sync(lambda s: s.scalars(
        select(AuditLog.action).where(AuditLog.target == "1.2.3.1")).all())
    assert audits == ["review"]
    resp = await client.post("/api/rad_review", headers=basic("rad"),
                             json={"uid": "1.2.3.3", "correct": True})
    assert resp.status == 404  # queued: no AI report yet
    resp = await client.post("/api/rad_review", headers=basic("rad"),
                             json={"uid": "1.2.3.1", "correct": "yes"})
    assert resp.status == 400


async def test_requeue(api):
    client, services = api
    seed(services.db)
    h = basic("rad")
    resp = await client.post("/api/requeue", json={"uid": "1.2.3.2"}, headers=h)
    assert resp.status == 200
    assert services.db.read_sync(repo.get_exam, "1.2.3.2").exam.status == "requeue"
    assert (await client.post("/api/requeue", json={"uid": "9.9"}, headers=h)).status == 404
    assert (await client.post("/api/requeue", json={"uid": "x/y"}, headers=h)).status == 400
    services.db.write_sync(queue.claim, "someone", 600)
    busy = services.db.read_sync(repo.list_exams, repo.ExamFilter(statuses=(PROCESSING,)))
    uid = busy.rows[0].exam.uid
    resp = await client.post("/api/requeue", json={"uid": uid}, headers=h)
    assert resp.status == 409


async def test_a_requeue_keeps_the_review_and_the_read_it_replaces(api):
    """Review, requeue, a new read: the first read and its review stay readable in the
    exam's history; reviewing twice keeps both verdicts."""
    client, services = api
    seed(services.db)
    h = basic("rad")
    for correct, note in ((True, "fine"), (False, "missed the effusion")):
        resp = await client.post("/api/rad_review", headers=h,
                                 json={"uid": "1.2.3.1", "correct": correct, "note": note})
        assert (await resp.json())["version"] == 1
    assert (await client.post("/api/requeue", json={"uid": "1.2.3.1"}, headers=h)).status == 200
    detail = await (await client.get("/api/exams/1.2.3.1", headers=h)).json()
    assert detail["status"] == "requeue" and detail["ai"]["version"] == 1
    assert detail["ai"]["review_note"] == "missed the effusion"  # until a new read exists
    services.db.write_sync(repo.save_ai_read, "1.2.3.1", text="FINDINGS: effusion",
                           severity=6, positive=1, model="m", endpoint="primary",
                           prompt_version="abc", threshold=5)
    detail = await (await client.get("/api/exams/1.2.3.1", headers=h)).json()
    assert detail["ai"]["version"] == 2 and detail["ai"]["reviewed"] is False
    assert detail["ai"]["prompt_version"] == "abc" and detail["ai"]["text"].endswith("effusion")
    # nothing of the first read carries over into the second (it gave no summary)
    assert (detail["ai"]["summary"], detail["ai"]["latency"]) == ("", 0.0)
    (first,) = detail["history"]["versions"]
    assert (first["version"], first["severity"], first["review_correct"],
            first["review_note"], first["reviewed_by"]) == (1, 7, 0, "missed the effusion",
                                                            "rad")
    assert first["text"] == "FINDINGS: x\nIMPRESSION: y" and first["superseded"]
    assert [(r["version"], r["correct"], r["note"]) for r in detail["history"]["reviews"]] \
        == [(1, True, "fine"), (1, False, "missed the effusion")]
    listed = await (await client.get("/api/exams?region=chest", headers=h)).json()
    assert next(e for e in listed["exams"] if e["uid"] == "1.2.3.1")["ai"]["version"] == 2


async def test_the_exam_page_lists_the_images_of_its_study(api):
    client, services = api
    for n, view in enumerate(("PA", "LAT", "PA")):
        services.db.write_sync(records.add_exam, ExamInfo(
            uid=f"1.5.{n}", study_uid="1.5" if n < 2 else "1.6", projection=view,
            status="queued"), None)
    detail = await (await client.get("/api/exams/1.5.1", headers=basic("viewer"))).json()
    assert [(i["uid"], i["projection"], i["severity"]) for i in detail["study_images"]] == [
        ("1.5.0", "PA", -1), ("1.5.1", "LAT", -1)]
    listed = await (await client.get("/api/exams?sort=received", headers=basic("viewer"))
                    ).json()
    assert {e["uid"]: e["study_size"] for e in listed["exams"]} == {
        "1.5.0": 2, "1.5.1": 2, "1.5.2": 1}
    services.db.write_sync(records.add_exam, ExamInfo(uid="1.7.0"), None)  # no study UID
    alone = await (await client.get("/api/exams/1.7.0", headers=basic("viewer"))).json()
    assert alone["study_images"] == []


async def test_ignored_and_failed_exams_say_why(api):
    client, services = api
    seed(services.db)
    services.db.write_sync(lambda s: s.execute(update(Exam).where(Exam.uid == "1.2.3.4").values(
        error="conversion failed: pixel data is truncated", reason_code="decode_failed")))
    services.db.write_sync(records.add_exam, ExamInfo(uid="1.2.3.5", status="ignore",
                                                      body_part="NECK"), None)
    services.db.write_sync(lambda s: s.execute(update(Exam).where(Exam.uid == "1.2.3.5").values(
        error="no region rule matches body part 'NECK'", reason_code="no_region_rule")))
    h = basic("rad")
    listed = await (await client.get("/api/exams?status=error,ignore", headers=h)).json()
    reasons = {e["uid"]: (e["reason_code"], e["reason"]) for e in listed["exams"]}
    assert reasons == {
        "1.2.3.4": ("decode_failed", "conversion failed: pixel data is truncated"),
        "1.2.3.5": ("no_region_rule", "no region rule matches body part 'NECK'")}
    done = await (await client.get("/api/exams/1.2.3.1", headers=h)).json()
    assert (done["reason_code"], done["reason"]) == ("", "")
    # Sent to the model as a chosen region: the reason goes, the region is set.
    bad = await client.post("/api/requeue", json={"uid": "1.2.3.5", "region": "neck"},
                            headers=h)
    assert bad.status == 400 and "region must be one of" in (await bad.json())["detail"]
    resp = await client.post("/api/requeue", json={"uid": "1.2.3.5", "region": "chest"},
                             headers=h)
    assert resp.status == 200 and (await resp.json())["region"] == "chest"
    exam = services.db.read_sync(repo.get_exam, "1.2.3.5").exam
    assert (exam.status, exam.region, exam.reason_code, exam.error) == (
        "requeue", "chest", "", "")
    audit = services.db.read_sync(lambda s: s.scalars(select(AuditLog.detail).where(
        AuditLog.action == "requeue", AuditLog.target == "1.2.3.5")).all())
    assert audit == ["region chest"]


async def test_config_has_no_secrets_and_its_reads_are_not_audited(api):
    client, services = api
    resp = await client.get("/api/config", headers=basic("viewer"))
    config = await resp.json()
    assert (config["user"], config["role"]) == ("viewer", "viewer")
    assert config["can"] == {"review": False, "check": False, "requeue": False, "admin": False}
    text = await resp.text()
    assert "scrypt" not in text and "password" not in text
    await client.get("/api/config", headers=basic("viewer"))  # a second page load
    actions = services.db.read_sync(lambda s: s.scalars(select(AuditLog.action)).all())
    assert actions.count("config.read") == 0 and actions.count("login") == 1


async def test_config_carries_each_endpoints_last_error(api):
    client, services = api
    config = await (await client.get("/api/config", headers=basic("viewer"))).json()
    assert config["endpoints"] == [{"name": "primary", "url": "http://127.0.0.1:8000",
                                    "model": "google/medgemma-4b-it", "healthy": True,
                                    "error": "", "error_at": "", "probe": "",
                                    "probe_reason": "", "probe_at": ""}]
    failure = {"healthy": False, "error": "GET http://gpu:8000/health: HTTP 503",
               "error_at": "2026-12-02T10:00:00+00:00", "probe": "failing",
               "probe_reason": "normal chest: severity 9, expected 0-3",
               "probe_at": "2026-12-02T09:59:00+00:00"}
    await services.bus.publish(ENDPOINT_HEALTH, primary=failure)  # as a relay does
    for _ in range(100):
        config = await (await client.get("/api/config", headers=basic("viewer"))).json()
        if config["endpoints"][0]["healthy"] is False:
            break
        await asyncio.sleep(0.02)
    assert config["endpoints"][0] == {"name": "primary", "url": "http://127.0.0.1:8000",
                                      "model": "google/medgemma-4b-it", **failure}
    dashboard = await services.hub.dashboard()
    assert dashboard["endpoints"] == {"primary": False}
    assert dashboard["endpoint_errors"]["primary"]["error"] == failure["error"]
    assert dashboard["endpoint_probes"]["primary"] == {
        "probe": "failing", "reason": "normal chest: severity 9, expected 0-3",
        "at": "2026-12-02T09:59:00+00:00"}


async def test_logins_are_audited_and_failures_slowed(api):
    client, services = api
    started = asyncio.get_running_loop().time()
    for _ in range(5):
        assert (await client.get("/api/config", headers=basic("viewer", "bad"))).status == 401
    # each attempt waits before its check: 0 + 0.05 + 0.1 + 0.2 + 0.4 seconds
    assert asyncio.get_running_loop().time() - started >= 0.7
    assert (await client.get("/api/config", headers=basic("viewer"))).status == 200
    assert (await client.get("/api/config", headers=basic("viewer"))).status == 200
    actions = services.db.read_sync(lambda s: s.scalars(
        select(AuditLog.action).order_by(AuditLog.id)).all())
    assert actions.count("login.failed") == 5
    assert actions.count("login") == 1  # verified once, then remembered


async def test_security_headers(api):
    client, _ = api
    for path in ("/", "/api/config", "/healthz", "/static/app.js"):
        resp = await client.get(path, headers=basic("viewer"))
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"


async def test_spec_lists_exactly_the_routes(api):
    client, _ = api
    spec = await (await client.get("/api/spec", headers=basic("viewer"))).json()
    assert spec == load_spec(client.app[SETTINGS].regions)
    region = spec["paths"]["/api/requeue"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["region"]
    assert region["enum"][:2] == ["", "abdomen"] and "chest" in region["enum"]
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    served = {(r.method, r.resource.canonical) for r in client.app.router.routes()
              if r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    assert documented == served


def test_spec_validates():
    from openapi_spec_validator import validate

    validate(load_spec())


async def test_totals_and_statistics_are_reused_for_their_ttl(aiohttp_client, tmp_path, db):
    from web.conftest import web_services, web_settings
    from xrayvision.events import LocalBus
    from xrayvision.images import FilesystemStore
    from xrayvision.web.app import init_app
    from xrayvision.web.health import Readiness

    app = init_app(web_settings(tmp_path, count_cache=60.0, stats_cache=60.0), Readiness())
    async with web_services(app, db, FilesystemStore(tmp_path), LocalBus()):
        client = await aiohttp_client(app)
        h = basic("viewer")
        seed(db)
        first = await (await client.get("/api/exams?size=2", headers=h)).json()
        stats = await (await client.get("/api/stats/global", headers=h)).json()
        db.write_sync(records.add_exam, ExamInfo(uid="1.2.3.9", status=QUEUED))
        again = await (await client.get("/api/exams?size=2", headers=h)).json()
        assert again["exams"][0]["uid"] == "1.2.3.9"  # the page itself is always fresh
        assert again["total"] == first["total"] == 4  # the total is reused
        # ... but never contradicts the page shown: a page not full ends the list
        whole = await (await client.get("/api/exams", headers=h)).json()
        assert len(whole["exams"]) == 5 and (whole["total"], whole["pages"]) == (5, 1)
        assert await (await client.get("/api/stats/global", headers=h)).json() == stats
        other = await (await client.get("/api/exams?status=queued", headers=h)).json()
        assert other["total"] == 2  # another filter: counted now


async def test_cache_single_flight_and_errors():
    from xrayvision.web.cache import AggregateCache

    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.05)
        return len(calls)

    cache = AggregateCache(10)
    assert await asyncio.gather(*(cache.get("k", compute) for _ in range(5))) == [1] * 5
    assert len(calls) == 1

    async def fail():
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError):
        await cache.get("e", fail)
    assert await cache.get("e", compute) == 2  # a failure is not cached


async def test_stale_statistics_are_answered_while_one_refresh_runs():
    from xrayvision.web.cache import AggregateCache

    now = [0.0]
    calls = []
    release = asyncio.Event()

    async def compute():
        calls.append(now[0])
        if len(calls) > 1:
            await release.wait()
        return len(calls)

    cache = AggregateCache(10, clock=lambda: now[0], stale_while_revalidate=True)
    assert await cache.get("k", compute) == 1
    now[0] = 11  # expired
    assert await asyncio.gather(*(cache.get("k", compute) for _ in range(5))) == [1] * 5
    await asyncio.sleep(0)
    assert len(calls) == 2  # one background refresh, nobody waited for it
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert await cache.get("k", compute) == 2


async def test_admin_sees_users_and_the_audit_log_filtered_and_paged(api):
    client, services = api
    h = basic("admin")
    users = await (await client.get("/api/admin/users", headers=h)).json()
    assert users == {"users": [{"username": "admin", "role": "admin"},
                               {"username": "rad", "role": "radiologist"},
                               {"username": "viewer", "role": "viewer"}]}
    assert "scrypt" not in str(users)
    await client.get("/api/config", headers=basic("rad"))  # a login
    await client.get("/api/config", headers=basic("rad", "wrong"))  # a failed one
    for i in range(120):
        services.db.write_sync(repo.audit, "requeue", username="rad", target=f"1.2.{i}")
    page = await (await client.get("/api/admin/audit?user=rad&action=login",
                                   headers=h)).json()
    assert [e["action"] for e in page["entries"]] == ["login.failed", "login"]
    assert page["more"] is False
    first = await (await client.get("/api/admin/audit?action=requeue", headers=h)).json()
    assert len(first["entries"]) == 100 and first["more"] is True
    assert first["entries"][0]["target"] == "1.2.119"  # newest first
    rest = await (await client.get(
        f"/api/admin/audit?action=requeue&before={first['entries'][-1]['id']}",
        headers=h)).json()
    assert len(rest["entries"]) == 20 and rest["entries"][-1]["target"] == "1.2.0"
    later = await (await client.get("/api/admin/audit?since=2999-01-01", headers=h)).json()
    assert later["entries"] == []
    assert (await client.get("/api/admin/audit?before=x", headers=h)).status == 400


async def test_exam_detail_shows_earlier_and_withdrawn_radiologist_reports(api):
    client, services = api
    seed(services.db)
    db = services.db
    db.write_sync(repo.save_rad_report, "1.2.3.1", fhir_id="r1", fhir_version="2",
                  fhir_status="amended", text="Pneumonie bazală; addendum", severity=8)
    db.write_sync(repo.save_rad_report, "1.2.3.1", severity=7, checked=True)  # a recheck
    assert db.write_sync(repo.withdraw_rad_reports, "r1", "entered-in-error") == ["1.2.3.1"]
    exam = await (await client.get("/api/exams/1.2.3.1", headers=basic("viewer"))).json()
    assert exam["rad"] is None
    assert [(v["text"], v["ended_by"]) for v in exam["rad_history"]] == [
        ("Pneumonie bazală", "replaced"),
        ("Pneumonie bazală; addendum", "entered-in-error")]
    assert exam["rad_history"][1]["severity"] == 7  # as it was when withdrawn


async def test_stats_per_model_include_the_shadow_models(api):
    """A shadow model's reads are counted per shadow model, apart from the AI reads."""
    client, services = api
    seed(services.db)
    services.db.write_sync(repo.save_shadow_read, "1.2.3.1", text="FINDINGS: x",
                           positive=1, severity=8, confidence=80, summary="", model="mg-q4",
                           endpoint="shadow", latency=2.0, prompt_version="p")
    models = await (await client.get("/api/stats/models", headers=basic("viewer"))).json()
    (shadow,) = models["shadow"]
    assert (shadow["model"], shadow["reads"]) == ("mg-q4", 1)
    assert shadow["live"]["assessed"] == 1  # against the live read of 1.2.3.1
    assert "mg-q4" not in [m["model"] for m in models["models"]]
