"""The ``web`` role: fills in the web application's services once the database is up,
creates the first admin when no user is configured, and runs the live-update hub (the
HTTP server itself runs in every process, from start-up: health, readiness, metrics)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from sqlalchemy.exc import IntegrityError

from xrayvision.config import User
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.fhir.health import HEALTH_KEY, FhirHealth
from xrayvision.passwords import hash_password
from xrayvision.runtime import Runtime
from xrayvision.web.auth import BOOTSTRAP_KEY, bootstrap_password
from xrayvision.web.context import AUTH, SERVICES
from xrayvision.web.live import Hub

log = logging.getLogger(__name__)


async def bootstrap_admin(db: Database) -> tuple[str, str | None]:
    """The stored hash of the first-start ``admin`` user, creating it when absent.
    Returns (hash, password); the password only when this call created it."""
    stored = await db.read(repo.get_state, BOOTSTRAP_KEY)
    if stored:
        return stored, None
    password = bootstrap_password()
    hashed = hash_password(password)
    try:
        await db.write(repo.insert_state, BOOTSTRAP_KEY, hashed)
    except IntegrityError:  # another pod created it first
        stored = await db.read(repo.get_state, BOOTSTRAP_KEY)
        assert stored is not None
        return stored, None
    return hashed, password


async def dashboard_state(db: Database, *, studies: bool = False,
                          fhir: bool = False) -> dict[str, Any]:
    """What every page's header shows: the queue by status, of ``studies`` when reads
    are per study (the worklist's unit), else of images; with ``fhir``, the HIS
    connection as the poller last found it."""
    queue = await db.read(repo.queue_counts, studies=studies)
    state: dict[str, Any] = {"queue": queue, "unit": "study" if studies else "image"}
    if fhir:
        state["fhir"] = FhirHealth.from_json(await db.read(repo.get_state,
                                                           HEALTH_KEY)).as_dict()
    return state


WATCH_INTERVAL = 2.0  # seconds between looks for exams other processes wrote (SQLite)


async def watch_other_writers(db: Database, hub: Hub,
                              interval: float = WATCH_INTERVAL) -> None:
    """On SQLite, events reach only this process: exams that another process writes
    (`xrayvision import` beside a running server) publish to nobody here. The newest
    exam row is watched instead, and a new one makes the pages reload (at most once an
    interval; exams this process wrote already sent their events). Runs until cancelled."""
    last = None
    while True:
        try:
            newest = await db.read(repo.newest_exam_row)
        except Exception:  # noqa: BLE001 - the database away: look again next time
            log.debug("could not look for new exams", exc_info=True)
        else:
            if last is not None and newest != last:
                hub.written_elsewhere()
            last = newest
        await asyncio.sleep(interval)


async def run(rt: Runtime) -> None:
    settings, db, app = rt.settings, rt.db, rt.app
    if not settings.users:
        hashed, password = await bootstrap_admin(db)
        app[AUTH].users = {"admin": User(role="admin", password_hash=hashed)}
        if password is not None:
            # Printed once, never logged; only the hash is stored.
            print(f"\nNo [users] configured: created user 'admin' with password {password}\n"
                  "Store it now; it is not shown again. Configure [users] to replace it.\n",
                  file=sys.stdout, flush=True)
            log.warning("created the first-start admin user; its password was printed once")
    services = app[SERVICES]
    hub = Hub(rt.bus, lambda: dashboard_state(
        db, studies=settings.ai.read_per == "study", fhir=bool(settings.fhir.url)))
    if rt.model is not None:  # until the first health event from a relay
        hub.set_endpoints({n: h.as_dict() for n, h in rt.model.health().items()})
    services.text = rt.text
    services.db, services.bus, services.store, services.hub = db, rt.bus, rt.store, hub
    log.info("web role ready", extra={"port": settings.web.port})
    watcher = asyncio.create_task(watch_other_writers(db, hub)) if db.is_sqlite else None
    try:
        await hub.run()
    finally:
        if watcher is not None:
            watcher.cancel()
        await hub.close_all()
        services.hub = None
