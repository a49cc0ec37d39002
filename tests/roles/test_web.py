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


def test_an_import_beside_a_running_server_shows_live_on_sqlite(tmp_path):
    """`xrayvision import` in another process on the same SQLite database: its exams
    reach the open pages (an exam.queued hint) within the watch interval."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import aiohttp

    from support.webproc import web_process
    from support.xrays import make_xray, write
    from web.conftest import USERS, basic

    xrayvision = str(Path(sys.executable).parent / "xrayvision")
    url = f"sqlite:///{tmp_path / 'data' / 'xrayvision.db'}"
    env = {"PATH": "/usr/bin:/bin", "XRAYVISION_DATABASE_URL": url,
           "XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data"),
           "XRAYVISION_DICOM_CONVERT_WORKERS": "1"}
    (tmp_path / "data").mkdir()
    subprocess.run([xrayvision, "migrate"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    dicom = write(make_xray(seed=5), tmp_path / "in" / "chest.dcm")
    users = {name: f"{u.role}:{u.password_hash}" for name, u in USERS.items()}

    async def watch(base: str) -> list[str]:
        seen: list[str] = []
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(base + "/ws", headers=basic("viewer")) as ws:
            started = time.monotonic()
            imported = await asyncio.to_thread(
                subprocess.run, [xrayvision, "import", str(dicom)], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=120)
            assert imported.returncode == 0, imported.stderr
            while time.monotonic() - started < 30 and "exam.queued" not in seen:
                msg = await ws.receive_json(timeout=30)
                seen.append(msg["type"])
        return seen

    with web_process(tmp_path, url, users) as base:
        assert "exam.queued" in asyncio.run(watch(base))
