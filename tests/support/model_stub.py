"""An OpenAI-compatible stub model server (the GPU model server cannot run here).

Told per request what to do through ``mode``: ``ok`` (a report, or CHK JSON for check
prompts), ``delay`` (answer after ``delay`` seconds), ``500``, ``drop`` (close the
connection), ``hang`` (never answer), ``malformed`` (broken JSON), ``chk_nojson`` (CHK
answered in prose), ``400`` (vLLM's answer to a request it refuses). A request with more
images than ``max_images`` is refused with vLLM's 400, as ``--limit-mm-per-prompt``
does. ``capacity`` bounds concurrent requests (more wait), like a GPU.
Translation prompts are answered with ``[en] `` and the user's text; ``checks`` maps a
piece of report text to the CHK answer for reports containing it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import web

REPORT = ("FINDINGS:\nRight lower lobe consolidation. No pleural effusion. Heart size normal."
          "\n\nIMPRESSION:\nRight lower lobe pneumonia.")
CHECK = {"positive": 1, "severity": 6, "confidence": 85,
         "summary": "right lower lobe pneumonia"}


@dataclass
class StubState:
    mode: str = "ok"
    healthy: bool = True
    delay: float = 0.0
    report: str = REPORT
    check: dict = field(default_factory=lambda: dict(CHECK))
    capacity: int = 1000
    checks: dict[str, dict] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    in_flight: int = 0
    peak: int = 0
    health_checks: int = 0
    # vLLM's --limit-mm-per-prompt: a request with more images is refused with 400
    max_images: int = 4


KEY = web.AppKey("state", StubState)
SEMAPHORE = web.AppKey("semaphore", asyncio.Semaphore)


async def health(request: web.Request) -> web.Response:
    request.app[KEY].health_checks += 1
    return web.Response(status=200 if request.app[KEY].healthy else 503)


async def models(request: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": "google/medgemma-4b-it"}]})


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


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[KEY]
    body = await request.json()
    state.requests.append(body)
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
    if _is_check(body):
        text = _user_text(body)
        check = next((c for key, c in state.checks.items() if key in text), state.check)
        content = "The severity is moderate." if mode == "chk_nojson" else (
            "Here you go:\n```json\n" + json.dumps(check) + "\n```")
    elif _system(body).startswith("You translate"):
        content = "[en] " + _user_text(body)
    else:
        content = state.report
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
