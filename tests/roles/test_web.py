"""The web role: the first-start admin, and the services it hands the web application."""

import asyncio

from support.runtimes import MODEL, runtime_for, settings_for
from xrayvision.db import repo
from xrayvision.passwords import verify_password
from xrayvision.roles import web
from xrayvision.roles.web import bootstrap_admin
from xrayvision.web.auth import BOOTSTRAP_KEY
from xrayvision.web.context import AUTH, SERVICES


async def test_first_start_admin_is_created_once_and_only_hashed(sqlite_db):
    hashed, password = await bootstrap_admin(sqlite_db)
    assert password and verify_password(password, hashed)
    assert sqlite_db.read_sync(repo.get_state, BOOTSTRAP_KEY) == hashed
    assert password not in hashed
    again, none = await bootstrap_admin(sqlite_db)
    assert (again, none) == (hashed, None)


async def test_run_fills_in_the_services_from_the_runtime(tmp_path, sqlite_db, capsys):
    settings = settings_for(tmp_path, "web", XRAYVISION_AI_PRIMARY_URL=MODEL)
    async with runtime_for(settings, sqlite_db, tmp_path) as rt:
        services = rt.app[SERVICES]
        task = asyncio.create_task(web.run(rt))
        try:
            for _ in range(100):
                if services.hub is not None:
                    break
                await asyncio.sleep(0.02)
            assert services.db is rt.db and services.bus is rt.bus
            assert services.store is rt.store and services.text is rt.text
            assert services.hub.health == {"primary": True}  # until a relay says otherwise
            assert list(rt.app[AUTH].users) == ["admin"]  # no [users]: the first-start admin
            assert "created user 'admin' with password" in capsys.readouterr().out
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert services.hub is None  # the hub went with the role
