"""Two web processes on one PostgreSQL: an event published in one reaches a WebSocket
client of the other (through LISTEN/NOTIFY)."""

import asyncio
import json

import aiohttp

from support import records
from support.webproc import web_process
from web.conftest import USERS, basic
from xrayvision.db.models import QUEUED
from xrayvision.db.repo import ExamInfo


async def test_requeue_on_one_pod_reaches_a_client_of_the_other(tmp_path, pg_db, pg_url):
    pg_db.write_sync(records.add_converted, ExamInfo(uid="1.2.9.1", region="chest",
                                                     status=QUEUED))
    users = {name: f"{u.role}:{u.password_hash}" for name, u in USERS.items()}
    with web_process(tmp_path / "a", pg_url, users) as pod_a, \
            web_process(tmp_path / "b", pg_url, users) as pod_b:
        async with aiohttp.ClientSession() as http, \
                http.ws_connect(pod_b + "/ws", headers=basic("viewer")) as ws:
            first = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            assert first["type"] == "dashboard" and first["queue"]["queued"] == 1
            async with http.post(pod_a + "/api/requeue", json={"uid": "1.2.9.1"},
                                 headers=basic("rad")) as resp:
                assert resp.status == 200, await resp.text()
            while True:
                msg = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
                if msg["type"] == "exam.requeued":
                    break
            assert msg["uid"] == "1.2.9.1"
