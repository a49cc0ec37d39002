import asyncio
import base64
import contextlib
import dataclasses

import aiohttp
import pytest

from support.model_stub import Stub
from xrayvision.ai.client import Endpoint, ModelClient
from xrayvision.ai.prompts import load_prompts
from xrayvision.ai.text import TextServices
from xrayvision.config import User, load_settings
from xrayvision.events import LocalBus
from xrayvision.images import FilesystemStore
from xrayvision.passwords import hash_password
from xrayvision.roles.web import dashboard_state
from xrayvision.web.app import init_app
from xrayvision.web.context import SERVICES, SETTINGS
from xrayvision.web.health import Readiness
from xrayvision.web.live import Hub

# Cheap hashes (n=2**10) keep the many logins of the tests fast; production uses 2**14.
PASSWORDS = {"admin": "admin-pw", "rad": "rad-pw", "viewer": "viewer-pw"}
ROLES = {"admin": "admin", "rad": "radiologist", "viewer": "viewer"}
USERS = {name: User(role=ROLES[name], password_hash=hash_password(pw, n=2**10))
         for name, pw in PASSWORDS.items()}


def basic(user: str, password: str | None = None) -> dict:
    password = PASSWORDS[user] if password is None else password
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def web_settings(tmp_path, read_per="image", **web):
    """Caches off unless asked for: tests read right after they write. Read per image
    unless asked for (the seeded exams carry reads of their own)."""
    web = {"count_cache": 0.0, "stats_cache": 0.0, **web}
    settings = load_settings(tmp_path, env={"XRAYVISION_SERVER_ROLES": "web",
                                            "XRAYVISION_AI_READ_PER": read_per})
    return dataclasses.replace(settings, users=USERS,
                               web=dataclasses.replace(settings.web, **web))


@contextlib.asynccontextmanager
async def web_services(app, db, store, bus, model_url=None):
    """What the web role fills in, with a model client for /api/check when given."""
    async with aiohttp.ClientSession() as session:
        services = app[SERVICES]
        per_study = app[SETTINGS].ai.read_per == "study"
        fhir = bool(app[SETTINGS].fhir.url)
        hub = Hub(bus, lambda: dashboard_state(db, studies=per_study, fhir=fhir),
                  dashboard_interval=0.05)
        if model_url:
            model = ModelClient([Endpoint("primary", model_url, "m")], session, max_attempts=1)
            services.text = TextServices(model, load_prompts(None))
            hub.set_endpoints({n: h.as_dict() for n, h in model.health().items()})
        services.db, services.bus, services.store, services.hub = db, bus, store, hub
        task = asyncio.create_task(hub.run())
        try:
            yield services
        finally:
            task.cancel()
            await hub.close_all()


@pytest.fixture
async def stub():
    server = await Stub().start()
    yield server
    await server.stop()


@pytest.fixture
async def api(aiohttp_client, tmp_path, db, stub):
    """A test client of the web app on ``db`` with the stub model; (client, services)."""
    bus = LocalBus()
    await bus.start()
    store = FilesystemStore(tmp_path / "images")
    app = init_app(web_settings(tmp_path), Readiness())
    async with web_services(app, db, store, bus, stub.url) as services:
        client = await aiohttp_client(app)
        yield client, services
