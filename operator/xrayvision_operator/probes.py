"""The operator's probe endpoint (``--probe-port``): ``/healthz`` answers while the
process runs its event loop (liveness); ``/readyz`` answers 200 only while the API server
answered the last check (every :data:`CHECK_SECONDS`), else 503 with the error, so an
API server that is away shows in the pod's readiness and in
``xrayvision_operator_apiserver_up``, while the operator keeps retrying.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from xrayvision_operator import metrics

log = logging.getLogger(__name__)

CHECK_SECONDS = 10.0


class ApiServerHealth:
    """The outcome of the last API server check (``check`` raises when it does not
    answer)."""

    def __init__(self, check: Callable[[], object]) -> None:
        self.check = check
        self.ok = False
        self.error = "not checked yet"
        self.checked_at = 0.0

    async def run_once(self) -> None:
        try:
            await asyncio.to_thread(self.check)
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            text = str(exc).strip()
            if self.ok or self.checked_at == 0.0:  # said once per outage
                log.warning("the Kubernetes API server does not answer: %s",
                            text.splitlines()[0] if text else type(exc).__name__)
            self.ok, self.error = False, f"{type(exc).__name__}: {exc}"[:500]
        else:
            if not self.ok and self.checked_at:
                log.info("the Kubernetes API server answers again")
            self.ok, self.error = True, ""
        self.checked_at = time.time()
        metrics.APISERVER_UP.set(1 if self.ok else 0)

    async def run(self, interval: float = CHECK_SECONDS) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(interval)


def make_app(health: ApiServerHealth) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if health.ok:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "apiserver": health.error},
                                 status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(health: ApiServerHealth, port: int) -> web.AppRunner:
    """Starts the probe endpoint on all addresses (the kubelet probes the pod's IP)."""
    runner = web.AppRunner(make_app(health), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - the pod's own network
    return runner
