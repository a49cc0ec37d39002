"""``/healthz`` (liveness), ``/readyz`` (database reachable, schema current, every role that
serves others started, space left where the process writes), ``/metrics``."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from xrayvision import metrics
from xrayvision.ai.probes import stored_verdicts
from xrayvision.db.engine import Database
from xrayvision.db.migrate import schema_state
from xrayvision.logs import first_line
from xrayvision.web.context import SERVICES


@dataclass
class Readiness:
    """Whether this process can serve: set by start-up, re-checked on /readyz (cached)."""

    db: Database | None = None
    reason: str = "starting: database not connected yet"
    ready: bool = False
    checked: float = 0.0
    ttl: float = 2.0
    starting: set[str] = field(default_factory=set)  # roles not serving yet (ingest's SCP)
    # Folders this process writes to (what for: path), each needing min_free bytes free:
    # a full disk makes the process unready (senders get 0xA700 meanwhile).
    disks: dict[str, Path] = field(default_factory=dict)
    min_free: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def set(self, ready: bool, reason: str) -> None:
        self.ready, self.reason, self.checked = ready, reason, time.monotonic()
        self._publish()

    def role_starting(self, role: str) -> None:
        """Not ready until :meth:`role_up` for ``role``."""
        self.starting.add(role)
        self._publish()

    def role_up(self, role: str) -> None:
        self.starting.discard(role)
        self._publish()

    def _publish(self) -> None:
        metrics.READY.set(1 if self.ready and not self.starting else 0)

    async def check(self) -> tuple[bool, str]:
        """Re-checks the database at most once per ``ttl`` seconds; returns (ready, reason)."""
        async with self._lock:
            if self.db is None or time.monotonic() - self.checked < self.ttl:
                return self.ready, self.reason
            try:
                state = await asyncio.wait_for(
                    self.db.run_in_pool(schema_state, self.db.engine), timeout=5
                )
            except Exception as exc:  # any failure means "not ready"; the reason says which
                self.set(False, f"database unreachable: {first_line(exc)}")
                return self.ready, self.reason
            full = await asyncio.to_thread(full_disks, self.disks, self.min_free)
            if full:
                self.set(False, f"disk full: {'; '.join(full)}")
            else:
                self.set(state.is_current, state.describe())
            return self.ready, self.reason


def full_disks(disks: dict[str, Path], min_free: int) -> list[str]:
    """Of ``disks`` (what for: folder), those with less than ``min_free`` bytes free, each
    described; a folder that does not exist yet is measured where it will be."""
    full = []
    for what, folder in disks.items():
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None:
            continue
        try:
            free = shutil.disk_usage(existing).free
        except OSError:
            continue
        if free < min_free:
            full.append(f"{free // 2**20} MiB free for the {what} ({folder}), "
                        f"under {min_free // 2**20} MiB")
    return full


READINESS = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


WEB_ROLE = web.AppKey("web_role", bool)


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    ready, reason = await readiness.check()
    if ready and request.app.get(WEB_ROLE) and request.app[SERVICES].hub is None:
        ready, reason = False, "starting: the web role is not attached yet"
    if ready and readiness.starting:
        ready, reason = False, f"starting: {', '.join(sorted(readiness.starting))} not up yet"
    return web.json_response(
        {"status": "ready" if ready else "not ready", "detail": reason},
        status=200 if ready else 503,
    )


async def metrics_view(request: web.Request) -> web.Response:
    """Prometheus text; credentials, when ``[web] metrics_auth`` asks for them, are checked
    by the authentication middleware like those of /api."""
    body = await asyncio.to_thread(generate_latest, REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def model_probes(request: web.Request) -> web.Response:
    """The last known-answer probe verdict of each model endpoint (no patient data: the
    endpoint, its URL and model, pass or fail and why), for the operator's
    ``ProbesPassing`` condition; 503 until the database is connected."""
    db = request.app[READINESS].db
    if db is None:
        return web.json_response({"verdicts": [], "detail": "database not connected yet"},
                                 status=503)
    try:
        verdicts = await db.read(stored_verdicts)
    except Exception as exc:  # noqa: BLE001 - any failure: the caller asks again later
        return web.json_response({"verdicts": [], "detail": first_line(exc)}, status=503)
    return web.json_response({"verdicts": verdicts})


def setup_health_routes(app: web.Application) -> None:
    app.router.add_get("/model-probes", model_probes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
