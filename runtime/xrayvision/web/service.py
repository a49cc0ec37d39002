"""The ``web`` role: fills in the web application's services once the database is up,
creates the first admin when no user is configured, and runs the live-update hub."""

from __future__ import annotations

import logging
import sys

import aiohttp
from aiohttp import web
from sqlalchemy.exc import IntegrityError

from xrayvision.ai.client import ModelClient
from xrayvision.ai.pipeline import Pipeline
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.service import endpoints
from xrayvision.config import Settings, User
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.events import Bus
from xrayvision.images import ImageStore
from xrayvision.passwords import hash_password
from xrayvision.tasks import run_together
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


async def dashboard_state(db: Database) -> dict:
    return {"queue": await db.read(repo.queue_counts)}


async def run_web(settings: Settings, db: Database, store: ImageStore, bus: Bus,
                  app: web.Application) -> None:
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
    async with aiohttp.ClientSession() as session:
        model = None
        tasks = []
        hub = Hub(bus, lambda: dashboard_state(db))
        if settings.ai.primary_url:
            async def on_health(health: dict[str, bool]) -> None:
                hub.health = dict(health)

            model = ModelClient(endpoints(settings), session,
                                max_attempts=settings.ai.max_attempts, on_health=on_health)
            services.pipeline = Pipeline(
                model, db, store, bus, load_prompts(settings.ai.prompts_dir),
                severity_threshold=settings.processing.severity_threshold,
                max_tokens=settings.ai.max_tokens)
            hub.health = dict(model.healthy)
            tasks.append(model.health_loop(settings.ai.health_interval))
        services.db, services.bus, services.store, services.hub = db, bus, store, hub
        log.info("web role ready", extra={"port": settings.web.port})
        try:
            await run_together(hub.run(), *tasks)
        finally:
            await hub.close_all()
            services.hub = None
