import base64
import dataclasses

from xrayvision.config import User, load_settings
from xrayvision.passwords import hash_password
from xrayvision.web.app import init_app
from xrayvision.web.health import Readiness


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_liveness_and_readiness_before_the_database(aiohttp_client, tmp_path):
    client = await aiohttp_client(init_app(load_settings(tmp_path, env={}), Readiness()))
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["detail"].startswith("starting")


async def test_readiness_follows_the_schema(aiohttp_client, tmp_path, db):
    from xrayvision.db.migrate import schema_state

    readiness = Readiness(db=db, ttl=0)
    settings = load_settings(tmp_path, env={"XRAYVISION_SERVER_ROLES": "relay"})
    client = await aiohttp_client(init_app(settings, readiness))
    resp = await client.get("/readyz")
    assert resp.status == 200, await resp.text()
    assert schema_state(db.engine).head[0] in (await resp.json())["detail"]


async def test_metrics_open_by_default_and_protected_when_configured(aiohttp_client, tmp_path):
    settings = load_settings(tmp_path, env={})
    client = await aiohttp_client(init_app(settings, Readiness()))
    resp = await client.get("/metrics")
    assert resp.status == 200 and "xrayvision_ready" in await resp.text()

    locked = dataclasses.replace(
        settings, web=dataclasses.replace(settings.web, metrics_auth=True),
        users={"prom": User("viewer", hash_password("scrape", n=2**10))})
    client = await aiohttp_client(init_app(locked, Readiness()))
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=basic("prom", "wrong"))).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Basic !!"})).status == 401
    assert (await client.get("/metrics", headers=basic("prom", "scrape"))).status == 200


async def test_a_web_process_is_ready_only_once_the_role_is_attached(aiohttp_client, tmp_path,
                                                                     sqlite_db):
    from xrayvision.web.context import SERVICES

    readiness = Readiness(db=sqlite_db, ttl=0)
    app = init_app(load_settings(tmp_path, env={"XRAYVISION_SERVER_ROLES": "web"}), readiness)
    client = await aiohttp_client(app)
    resp = await client.get("/readyz")
    assert resp.status == 503 and "web role" in (await resp.json())["detail"]
    app[SERVICES].hub = object()
    assert (await client.get("/readyz")).status == 200


async def test_metrics_credentials_are_the_api_users_including_the_first_start_admin(
        aiohttp_client, tmp_path):
    from xrayvision.web.context import AUTH

    settings = load_settings(tmp_path, env={"XRAYVISION_WEB_METRICS_AUTH": "yes"})
    app = init_app(settings, Readiness())  # no [users]: the web role adds the bootstrap admin
    app[AUTH].users = {"admin": User(role="admin", password_hash=hash_password("pw", n=2**10))}
    client = await aiohttp_client(app)
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=basic("admin", "pw"))).status == 200


async def test_not_ready_until_every_starting_role_is_up(aiohttp_client, tmp_path, db):
    """ingest: until its SCP listens (its conversion processes start first)."""
    readiness = Readiness(db=db, ttl=0)
    settings = load_settings(tmp_path, env={"XRAYVISION_SERVER_ROLES": "ingest"})
    client = await aiohttp_client(init_app(settings, readiness))
    readiness.role_starting("ingest")
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["detail"] == "starting: ingest not up yet"
    assert "xrayvision_ready 0.0" in await (await client.get("/metrics")).text()
    readiness.role_up("ingest")
    assert (await client.get("/readyz")).status == 200
    assert "xrayvision_ready 1.0" in await (await client.get("/metrics")).text()


async def test_model_probe_verdicts_for_the_operator(aiohttp_client, tmp_path, db):
    """Every process answers GET /model-probes (no credentials, no patient data) with
    the stored verdicts: what the operator's ProbesPassing condition is made of."""
    import json

    from xrayvision.ai.probes import STATE_PREFIX, CaseResult, Verdict
    from xrayvision.db import repo

    early = await aiohttp_client(init_app(load_settings(tmp_path, env={}), Readiness()))
    assert (await early.get("/model-probes")).status == 503  # no database yet
    verdict = Verdict("primary", "http://gpu:8000", "m", False, "normal chest: slow",
                      "2026-12-03T10:00:00+00:00", "abc",
                      (CaseResult("normal chest", False, ("slow",), 0, 130.0),))
    db.write_sync(repo.set_state, STATE_PREFIX + "primary", json.dumps(verdict.as_dict()))
    settings = load_settings(tmp_path, env={"XRAYVISION_SERVER_ROLES": "relay"})
    client = await aiohttp_client(init_app(settings, Readiness(db=db)))
    resp = await client.get("/model-probes")
    assert resp.status == 200
    (found,) = (await resp.json())["verdicts"]
    assert Verdict.from_dict(found) == verdict
