"""serve() in-process: shutdown releases what this process claimed; one model client and
one health loop per process, whatever roles it runs."""

import asyncio
import dataclasses

import aiohttp

from support import records
from support.model_stub import Stub
from support.pgserver import free_port
from xrayvision import serve as serve_module
from xrayvision.config import load_settings
from xrayvision.db import queue, repo
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.db.migrate import upgrade
from xrayvision.db.models import PROCESSING, QUEUED
from xrayvision.db.repo import ExamInfo
from xrayvision.passwords import hash_password


async def test_shutdown_releases_claimed_exams(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_module, "process_id", lambda: "this-process")
    settings = load_settings(tmp_path, env={
        "XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data"),
        "XRAYVISION_WEB_PORT": str(free_port()),
        "XRAYVISION_SERVER_ROLES": "relay",
    })
    settings = dataclasses.replace(settings, server=dataclasses.replace(
        settings.server, shutdown_grace=5))
    (tmp_path / "data").mkdir()
    db = Database(DatabaseOptions(url=settings.database_url))
    upgrade(db.engine)
    for uid in ("1.1", "1.2"):
        db.write_sync(records.add_exam, ExamInfo(uid=uid, status=QUEUED))
    db.write_sync(queue.claim, "this-process", 600)  # as the relay role will
    db.write_sync(queue.claim, "another-process", 600)

    stop = asyncio.Event()
    task = asyncio.create_task(serve_module.serve(settings, stop=stop))
    url = f"http://127.0.0.1:{settings.web.port}/readyz"
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            assert not task.done(), "serve stopped by itself"
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("serve never became ready")
    stop.set()
    assert await asyncio.wait_for(task, 10) == 0
    counts = db.read_sync(repo.queue_counts)
    assert counts[QUEUED] == 1 and counts[PROCESSING] == 1  # only our own claim released
    db.close()


async def test_one_health_loop_per_process(tmp_path):
    stub = await Stub().start()
    settings = load_settings(tmp_path, env={
        "XRAYVISION_SERVER_DATA_DIR": str(tmp_path / "data"),
        "XRAYVISION_WEB_PORT": str(free_port()),
        "XRAYVISION_SERVER_ROLES": "relay,fhir,web",  # each calls the model
        "XRAYVISION_AI_PRIMARY_URL": stub.url, "XRAYVISION_AI_HEALTH_INTERVAL": "1",
        "XRAYVISION_USERS_ADMIN": "admin:" + hash_password("pw-123456789", n=2**10),
    })
    (tmp_path / "data").mkdir()
    db = Database(DatabaseOptions(url=settings.database_url))
    upgrade(db.engine)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_module.serve(settings, stop=stop))
    try:
        base = f"http://127.0.0.1:{settings.web.port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                assert not task.done(), "serve stopped by itself"
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            start = stub.state.health_checks
            await asyncio.sleep(4.5)
            checks = stub.state.health_checks - start
            # one loop: about one check a second; three loops would make ~13
            assert 3 <= checks <= 6, checks
            auth = {"Authorization": aiohttp.encode_basic_auth("admin", "pw-123456789")}
            async with http.post(f"{base}/api/check", json={"text": "FINDINGS: normal"},
                                 headers=auth) as resp:
                assert resp.status == 200, await resp.text()  # the web role's text services
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
        db.close()
        await stub.stop()
