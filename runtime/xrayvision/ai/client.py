"""OpenAI-compatible chat client with primary/secondary failover (one per process).

Routing: the primary while it is healthy, else the secondary; back to the primary as soon
as a health check finds it up again. A request that fails (connection error, 5xx,
timeout, a body that is not the expected JSON) marks that endpoint unhealthy and goes at
once to the other one; after both, exponential back-off with jitter, up to
``max_attempts`` rounds. Health: vLLM's ``GET /health`` (a server without it: 404), then
``GET /v1/models``, which must list the endpoint's model name (a server serving another
model is down, with both names in the reason); every failed check is logged with its URL
and the HTTP status or the error, and each endpoint's last error is kept
(:meth:`ModelClient.health`) for the dashboard and ``/api/config``.
Endpoint URLs are bases without ``/v1`` (``config`` strips it).

Known-answer probes (:mod:`xrayvision.ai.probes`) judge an endpoint by its answers: one
that fails them is *degraded* (:meth:`ModelClient.set_probe`) and gets no request, as if
it were down, until it passes again; :meth:`ModelClient.chat_on` asks one endpoint, with
no failover and no effect on its health (the probes' and the shadow model's call).

Errors::

    ModelError
      +-- ModelUnavailable   no endpoint answered (exams stay queued; wait for `recovered`)
      +-- ModelBadOutput     endpoints answered, but never a chat completion (counts as a
      |                      failed attempt of the exam)
      +-- ModelRejected      4xx: the request itself is wrong (not retried)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import aiohttp

from xrayvision import metrics

log = logging.getLogger(__name__)


class ModelError(Exception):
    """A model call failed; see the subclasses."""


class ModelUnavailable(ModelError):
    """No endpoint could answer (down, 5xx, timeouts, broken answers)."""


class ModelBadOutput(ModelError):
    """Every answer in the last round was something other than a chat completion."""


class ModelRejected(ModelError):
    """An endpoint answered 4xx: the request is wrong and retrying will not help."""


@dataclass(frozen=True)
class Endpoint:
    name: str  # primary / secondary
    url: str
    model: str
    api_key: str = ""
    timeout: float = 300.0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True)
class ChatResult:
    text: str
    endpoint: str
    model: str
    seconds: float
    usage: dict = field(default_factory=dict)


def encode_body(body: dict) -> bytes:
    """JSON for a chat request. Image data URIs (base64, which JSON never needs to
    escape) are spliced in after encoding the rest: serialising a ~1 MB string would
    otherwise cost more than the rest of the request (bench/README.md, "Relay")."""
    blobs: list[str] = []
    # Unique per call (a clock reading), so that no content can match it by chance.
    marker = f"__xrayvision_blob_{time.perf_counter_ns()}_{{}}__"

    def swap(value):
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, str) and len(value) > 4096 and value.startswith("data:") \
                and ";base64," in value[:64]:
            blobs.append(value)
            return marker.format(len(blobs) - 1)
        return value

    text = json.dumps(swap(body), ensure_ascii=False)
    encoded = text.encode()
    for i, blob in enumerate(blobs):
        encoded = encoded.replace(f'"{marker.format(i)}"'.encode(),
                                  b'"' + blob.encode() + b'"', 1)
    return encoded


@dataclass(frozen=True)
class EndpointHealth:
    """What the dashboard shows of an endpoint: up or down, and its last failure (kept
    after it recovers, so that a flapping endpoint can be explained)."""

    healthy: bool
    error: str = ""
    error_at: str = ""  # ISO 8601 UTC; "" when it never failed
    probe: str = ""  # known-answer probes: "passing", "failing", "" (not probed yet)
    probe_reason: str = ""  # why the last probe round failed
    probe_at: str = ""  # when the last verdict was reached (ISO 8601 UTC)

    def as_dict(self) -> dict[str, object]:
        return {"healthy": self.healthy, "error": self.error, "error_at": self.error_at,
                "probe": self.probe, "probe_reason": self.probe_reason,
                "probe_at": self.probe_at}


@dataclass(frozen=True)
class ProbeState:
    """An endpoint's last known-answer probe verdict."""

    passed: bool
    reason: str = ""
    at: str = ""


def served_model_problem(endpoint: Endpoint, raw: bytes) -> str:
    """Why a ``/v1/models`` answer does not serve the endpoint's model ("" when it does):
    a clear error for a model name that does not match (pure)."""
    url = endpoint.url + "/v1/models"
    try:
        data = json.loads(raw)
        served = [str(m["id"]) for m in data["data"]]
    except (ValueError, KeyError, TypeError):
        return f"GET {url}: not an OpenAI model list"
    if endpoint.model in served:
        return ""
    return (f"GET {url}: the server serves {', '.join(repr(s) for s in served) or 'no model'}"
            f", not {endpoint.model!r} (the model name set for the {endpoint.name} endpoint)")


class _Failed(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class ModelClient:
    def __init__(self, endpoints: list[Endpoint], session: aiohttp.ClientSession, *,
                 max_attempts: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 on_health: Callable[[dict[str, EndpointHealth]], Awaitable[None]]
                 | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one model endpoint is needed")
        self.endpoints = endpoints
        self.session = session
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_health = on_health
        # Optimistic until a check or a request says otherwise.
        self.healthy = {e.name: True for e in endpoints}
        self.errors: dict[str, tuple[str, str]] = {}  # name -> (last error, when)
        self.probes: dict[str, ProbeState] = {}  # name -> last probe verdict
        self.recovered = asyncio.Event()
        self.recovered.set()
        self._publish_metrics()

    # -- health ------------------------------------------------------------------------------

    def degraded(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint failed its last known-answer probe round."""
        state = self.probes.get(endpoint.name)
        return state is not None and not state.passed

    def active(self) -> Endpoint | None:
        """The endpoint requests go to now (None when all are down or degraded)."""
        return next((e for e in self.endpoints
                     if self.healthy[e.name] and not self.degraded(e)), None)

    def _publish_metrics(self) -> None:
        active = self.active()
        for e in self.endpoints:
            metrics.MODEL_ENDPOINT_UP.labels(e.name).set(1 if self.healthy[e.name] else 0)
            metrics.MODEL_ACTIVE.labels(e.name).set(1 if active is e else 0)
            metrics.MODEL_DEGRADED.labels(e.name).set(1 if self.degraded(e) else 0)
        if active is None:
            self.recovered.clear()
        else:
            self.recovered.set()

    def health(self) -> dict[str, EndpointHealth]:
        """Each endpoint's state, last error and probe verdict, in failover order."""
        found = {}
        for e in self.endpoints:
            probe = self.probes.get(e.name)
            verdict = ("" if probe is None else "passing" if probe.passed else "failing")
            found[e.name] = EndpointHealth(
                self.healthy[e.name], *self.errors.get(e.name, ("", "")), probe=verdict,
                probe_reason=probe.reason if probe else "", probe_at=probe.at if probe else "")
        return found

    async def set_probe(self, name: str, state: ProbeState) -> None:
        """Takes a known-answer probe verdict for the endpoint ``name``: a failing one
        takes it out of routing (as if it were down) until a passing one; an unknown name
        is ignored."""
        if name not in self.healthy:
            return
        before = self.probes.get(name)
        self.probes[name] = state
        if before is not None and (before.passed, before.reason) == (state.passed, state.reason):
            return
        self._publish_metrics()
        if not state.passed:
            log.warning("model endpoint degraded: it failed its known-answer probes",
                        extra={"endpoint": name, "reason": state.reason})
            if self.active() is None:
                log.warning("no model endpoint passes its probes: exams wait in the queue")
        elif before is not None and not before.passed:
            log.info("model endpoint passes its known-answer probes again",
                     extra={"endpoint": name})
        if self.on_health is not None:
            await self.on_health(self.health())

    async def _set_health(self, endpoint: Endpoint, up: bool, reason: str = "") -> None:
        new_reason = False  # refused, then 503: news to the dashboard
        if not up and reason:
            new_reason = self.errors.get(endpoint.name, ("",))[0] != reason
            self.errors[endpoint.name] = (
                reason, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        if self.healthy[endpoint.name] == up and not new_reason:
            return
        self.healthy[endpoint.name] = up
        self._publish_metrics()
        if up:
            log.info("model endpoint up", extra={"endpoint": endpoint.name})
        else:
            log.warning("model endpoint down", extra={"endpoint": endpoint.name,
                                                      "reason": reason})
            if self.active() is None:
                log.warning("no model endpoint healthy: exams wait in the queue until one "
                            "recovers")
        if self.on_health is not None:
            await self.on_health(self.health())

    async def probe(self, endpoint: Endpoint) -> str:
        """Asks ``/health`` (vLLM; a server without it answers 404), then ``/v1/models``,
        whose list must name the endpoint's model. Returns "" when the endpoint is up,
        else why not: the URL asked and the HTTP status, the error, or the names the
        server serves."""
        timeout = aiohttp.ClientTimeout(total=min(10.0, endpoint.timeout))
        for path in ("/health", "/v1/models"):
            url = endpoint.url + path
            try:
                async with self.session.get(url, headers=endpoint.headers(),
                                            timeout=timeout) as resp:
                    raw = await resp.read()
                    if resp.status == 404 and path == "/health":
                        continue
                    if resp.status != 200:
                        body = raw[:200].decode(errors="replace").strip()
                        return f"GET {url}: HTTP {resp.status}" + (f" {body}" if body else "")
            except TimeoutError:
                return f"GET {url}: no answer within {timeout.total:g} s"
            except aiohttp.ClientError as exc:
                return f"GET {url}: {type(exc).__name__}: {exc}"
        return served_model_problem(endpoint, raw)

    async def check_all(self) -> None:
        for endpoint in self.endpoints:
            reason = await self.probe(endpoint)
            if reason:
                log.warning("model health check failed",
                            extra={"endpoint": endpoint.name, "reason": reason})
            await self._set_health(endpoint, not reason, reason)

    async def health_loop(self, interval: float) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(interval)

    # -- requests ----------------------------------------------------------------------------

    async def chat_on(self, endpoint: Endpoint, messages: list[dict], *, call: str,
                      max_tokens: int = 1024, temperature: float = 0.2,
                      within: float | None = None) -> ChatResult:
        """One chat completion from ``endpoint`` only: no failover, no retry, and no
        effect on its health or routing (known-answer probes, the shadow model). Raises
        ModelUnavailable (no answer, 5xx, ``within`` seconds passed), ModelBadOutput,
        ModelRejected."""
        payload = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if within is not None:  # seconds, instead of the endpoint's timeout
            endpoint = replace(endpoint, timeout=within)
        try:
            return await self._ask(endpoint, payload, call)
        except _Failed as exc:
            error = ModelBadOutput if exc.outcome == "bad_response" else ModelUnavailable
            raise error(f"{endpoint.name}: {exc}") from None

    async def _ask(self, endpoint: Endpoint, payload: dict, call: str) -> ChatResult:
        """One request, counted in the metrics by outcome; raises _Failed, ModelRejected."""
        started = time.perf_counter()
        try:
            text, usage = await self._post(endpoint, payload)
        except _Failed as exc:
            metrics.MODEL_REQUESTS.labels(call, endpoint.name, exc.outcome).inc()
            raise
        except ModelRejected:
            metrics.MODEL_REQUESTS.labels(call, endpoint.name, "rejected").inc()
            raise
        seconds = time.perf_counter() - started
        metrics.MODEL_REQUESTS.labels(call, endpoint.name, "ok").inc()
        metrics.MODEL_REQUEST_SECONDS.labels(call, endpoint.name).observe(seconds)
        for kind in ("prompt_tokens", "completion_tokens"):
            if isinstance(usage.get(kind), int):
                metrics.MODEL_TOKENS.labels(endpoint.name, kind[:-7]).inc(usage[kind])
        return ChatResult(text, endpoint.name, endpoint.model, seconds, usage)

    async def _post(self, endpoint: Endpoint, payload: dict) -> tuple[str, dict]:
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout)
        body = encode_body({**payload, "model": endpoint.model})
        headers = {**endpoint.headers(), "Content-Type": "application/json"}
        url = endpoint.url + "/v1/chat/completions"
        try:
            async with self.session.post(url, data=body, headers=headers,
                                         timeout=timeout) as resp:
                raw = await resp.read()
                if resp.status >= 500:
                    raise _Failed("error", f"POST {url}: HTTP {resp.status}")
                if resp.status >= 400:
                    raise ModelRejected(f"{endpoint.name} answered HTTP {resp.status}: "
                                        f"{raw[:300].decode(errors='replace')}")
        except TimeoutError:
            raise _Failed("timeout", f"POST {url}: no answer within {endpoint.timeout:g} s"
                          ) from None
        except aiohttp.ClientError as exc:
            raise _Failed("error", f"POST {url}: {type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(raw)
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Failed("bad_response", f"not a chat completion: {exc}") from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return text, usage

    async def chat(self, messages: list[dict], *, call: str, max_tokens: int = 1024,
                   temperature: float = 0.2) -> ChatResult:
        """One chat completion, with failover and back-off as described above."""
        payload = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        delay = self.backoff
        last = "no endpoint healthy"
        outcomes: list[str] = []
        for attempt in range(1, self.max_attempts + 1):
            tried: set[str] = set()
            outcomes = []
            # Never an endpoint that fails its probes: its answers are not trusted.
            usable = [e for e in self.endpoints if not self.degraded(e)]
            if not usable:
                raise ModelUnavailable("every model endpoint fails its known-answer probes")
            # The active endpoint first, then the other(s) at once when it fails.
            for endpoint in sorted(usable, key=lambda e: not self.healthy[e.name]):
                tried.add(endpoint.name)
                try:
                    result = await self._ask(endpoint, payload, call)
                except _Failed as exc:
                    last = f"{endpoint.name}: {exc}"
                    outcomes.append(exc.outcome)
                    await self._set_health(endpoint, False, str(exc))
                    if len(tried) < len(usable):
                        metrics.MODEL_FAILOVERS.labels(endpoint.name).inc()
                    continue
                await self._set_health(endpoint, True)
                return result
            if attempt < self.max_attempts:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff)
        if outcomes and set(outcomes) == {"bad_response"}:
            raise ModelBadOutput(f"no usable answer after {self.max_attempts} rounds; "
                                 f"last: {last}")
        raise ModelUnavailable(f"no model endpoint answered after {self.max_attempts} "
                               f"rounds; last: {last}")
