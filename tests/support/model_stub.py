"""An OpenAI-compatible stub model server (the GPU model server cannot run here).

Told per request what to do through ``mode``: ``ok`` (a report, or CHK JSON for check
prompts), ``delay`` (answer after ``delay`` seconds), ``500``, ``drop`` (close the
connection), ``hang`` (never answer), ``malformed`` (broken JSON), ``chk_nojson`` (CHK
answered in prose), ``400`` (vLLM's answer to a request it refuses). A request with more
images than ``max_images`` is refused with vLLM's 400, as ``--limit-mm-per-prompt``
does. ``capacity`` bounds concurrent requests (more wait), like a GPU.
Translation prompts are answered with ``[en] `` and the user's text; ``checks`` maps a
piece of report text to the CHK answer for reports containing it.

Like a correct model, it answers the shipped known-answer probe images (``probes/``)
rightly: a normal report and severity 0 for the normal chest, a massive effusion and
severity 8 for the other (``known``: image data URI hash -> (report, CHK)). Modes for
probes: ``wrong`` (alive but wrong: valid CHK JSON, severity 9 and positive for
everything), ``prose`` (a report without FINDINGS/IMPRESSION headings, one paragraph);
``delay`` makes it slow. ``served`` is what ``/v1/models`` lists (vLLM's
``--served-model-name`` takes several).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

REPORT = ("FINDINGS:\nRight lower lobe consolidation. No pleural effusion. Heart size normal."
          "\n\nIMPRESSION:\nRight lower lobe pneumonia.")
CHECK = {"positive": 1, "severity": 6, "confidence": 85,
         "summary": "right lower lobe pneumonia"}
NORMAL = ("FINDINGS:\nLungs are clear. No pleural effusion or pneumothorax. Heart size "
          "normal.\n\nIMPRESSION:\nNo acute cardiopulmonary abnormality.")
NORMAL_CHECK = {"positive": 0, "severity": 0, "confidence": 90, "summary": "normal chest"}
EFFUSION = ("FINDINGS:\nLarge right pleural effusion opacifying most of the right "
            "hemithorax, mediastinal shift to the left.\n\nIMPRESSION:\nMassive right "
            "pleural effusion.")
EFFUSION_CHECK = {"positive": 1, "severity": 8, "confidence": 90,
                  "summary": "massive right pleural effusion"}
WRONG_CHECK = {"positive": 1, "severity": 9, "confidence": 95, "summary": "critical"}
PROBES = Path(__file__).resolve().parents[2] / "probes"
SERVED = ("google/medgemma-4b-it", "medgemma", "m", "m1", "m2")


def image_key(data_uri: str) -> str:
    return hashlib.sha256(data_uri.encode()).hexdigest()


def png_key(png: bytes) -> str:
    """The key of a PNG as it travels in a request (a data URI)."""
    import base64

    return image_key("data:image/png;base64," + base64.b64encode(png).decode("ascii"))


def known_probes() -> dict[str, tuple[str, dict]]:
    """The shipped probe images and a correct model's answers to them."""
    answers = {"normal-chest-pa.png": (NORMAL, NORMAL_CHECK),
               "effusion-chest-pa.png": (EFFUSION, EFFUSION_CHECK)}
    return {png_key((PROBES / name).read_bytes()): answer
            for name, answer in answers.items() if (PROBES / name).exists()}


@dataclass
class StubState:
    mode: str = "ok"
    healthy: bool = True
    delay: float = 0.0
    report: str = REPORT
    check: dict = field(default_factory=lambda: dict(CHECK))
    capacity: int = 1000
    checks: dict[str, dict] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)  # all but the known-answer probes
    probe_requests: list[dict] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    health_checks: int = 0
    # vLLM's --limit-mm-per-prompt: a request with more images is refused with 400
    max_images: int = 4
    known: dict[str, tuple[str, dict]] = field(default_factory=known_probes)
    served: tuple[str, ...] = SERVED


KEY = web.AppKey("state", StubState)
SEMAPHORE = web.AppKey("semaphore", asyncio.Semaphore)


async def health(request: web.Request) -> web.Response:
    request.app[KEY].health_checks += 1
    return web.Response(status=200 if request.app[KEY].healthy else 503)


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model"} for name in request.app[KEY].served]})


def _system(body: dict) -> str:
    system = body.get("messages", [{}])[0].get("content", "")
    return system if isinstance(system, str) else ""


def _user_text(body: dict) -> str:
    content = body.get("messages", [{}, {}])[-1].get("content", "")
    return content if isinstance(content, str) else ""


def images_of(body: dict) -> list[str]:
    """The data URIs of a request's image parts (every message)."""
    return [part["image_url"]["url"] for message in body.get("messages", [])
            if isinstance(message.get("content"), list)
            for part in message["content"] if part.get("type") == "image_url"]


def _is_check(body: dict) -> bool:
    return "JSON" in _system(body)


def is_probe(state: StubState, body: dict) -> bool:
    """A request of a known-answer probe: one of its images, or CHK of its report."""
    if any(image_key(uri) in state.known for uri in images_of(body)):
        return True
    return _is_check(body) and any(r == _user_text(body) for r, _ in state.known.values())


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[KEY]
    body = await request.json()
    probe = is_probe(state, body)
    (state.probe_requests if probe else state.requests).append(body)
    mode = state.mode
    if mode == "500":
        return web.Response(status=500, text="engine error")
    if mode == "400":
        return web.json_response({"object": "error", "type": "BadRequestError", "code": 400,
                                  "message": "At most 1 image(s) may be provided in one "
                                             "request."}, status=400)
    if len(images_of(body)) > state.max_images:
        return web.json_response({"object": "error", "type": "BadRequestError", "code": 400,
                                  "message": f"At most {state.max_images} image(s) may be "
                                             "provided in one request."}, status=400)
    if mode == "drop":
        request.transport.close()
        return web.Response(status=500)
    if mode == "hang":
        await asyncio.sleep(3600)
    async with request.app[SEMAPHORE]:
        state.in_flight += 1
        state.peak = max(state.peak, state.in_flight)
        try:
            if state.delay:
                await asyncio.sleep(state.delay)
        finally:
            state.in_flight -= 1
    if mode == "malformed":
        return web.Response(text='{"choices": [ {"message": ', content_type="application/json")
    known = [state.known[k] for k in map(image_key, images_of(body)) if k in state.known]
    if _is_check(body):
        text = _user_text(body)
        check = next((c for report, c in state.known.values() if report == text), None) or \
            next((c for key, c in state.checks.items() if key in text), state.check)
        if mode == "wrong":
            check = WRONG_CHECK
        content = "The severity is moderate." if mode == "chk_nojson" else (
            "Here you go:\n```json\n" + json.dumps(check) + "\n```")
    elif _system(body).startswith("You translate"):
        content = "[en] " + _user_text(body)
    else:
        content = known[0][0] if known else state.report
        if mode == "prose":
            content = " ".join(line for line in content.splitlines()
                               if line and not line.endswith(":"))
    return web.json_response({
        "id": "stub", "object": "chat.completion", "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 60, "total_tokens": 360},
    })


def make_app(state: StubState | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[KEY] = state or StubState()
    app[SEMAPHORE] = asyncio.Semaphore(app[KEY].capacity)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


class Stub:
    """A running stub on a loopback port: ``url``, ``state``, ``stop()``/``start()``."""

    def __init__(self, state: StubState | None = None, port: int | None = None,
                 host: str = "127.0.0.1") -> None:
        from support.pgserver import free_port

        self.state = state or StubState()
        self.port = port or free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self._runner: web.AppRunner | None = None

    async def start(self) -> Stub:
        # A short shutdown: a "hang" request must not hold the test for a minute.
        self._runner = web.AppRunner(make_app(self.state), shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


if __name__ == "__main__":  # for benchmarks: python tests/support/model_stub.py PORT [DELAY] [CAP]
    import sys

    port = int(sys.argv[1])
    stub_state = StubState(delay=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0,
                           capacity=int(sys.argv[3]) if len(sys.argv) > 3 else 1000)
    web.run_app(make_app(stub_state), host="127.0.0.1", port=port, print=None)
