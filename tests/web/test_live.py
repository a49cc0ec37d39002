"""/ws: dashboard on connect, bus events to every client, slow clients dropped."""

import asyncio
import json

import aiohttp

from support import records
from web.conftest import basic
from xrayvision import metrics
from xrayvision.db.repo import ExamInfo
from xrayvision.events import LocalBus
from xrayvision.web.live import Client, Hub


async def receive(ws):
    msg = await asyncio.wait_for(ws.receive(), 2.0)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_dashboard_then_events(api):
    client, services = api
    services.db.write_sync(records.add_exam, ExamInfo(uid="1.2.3", status="queued"))
    assert (await client.get("/ws")).status == 401
    async with client.ws_connect("/ws", headers=basic("viewer")) as ws:
        first = await receive(ws)
        assert first["type"] == "dashboard" and first["queue"]["queued"] == 1
        assert first["endpoints"] == {"primary": True}
        await services.bus.publish("exam.queued", uid="1.2.4", region="chest")
        event = await receive(ws)
        assert event == {"type": "exam.queued", "uid": "1.2.4", "region": "chest"}
        refreshed = await receive(ws)  # queue sizes follow a queue event
        assert refreshed["type"] == "dashboard"
        down = {"healthy": False, "error": "GET http://gpu:8000/health: HTTP 503",
                "error_at": "2026-12-02T10:00:00+00:00"}
        await services.bus.publish("endpoint.health", primary=down,
                                   secondary={"healthy": True, "error": "", "error_at": ""})
        assert (await receive(ws))["type"] == "endpoint.health"
        assert services.hub.health == {"primary": False, "secondary": True}
        assert services.hub.endpoints()[0] == {"name": "primary", **down, "probe": "",
                                               "probe_reason": "", "probe_at": ""}
        # a relay of an earlier version, during a rolling upgrade: {name: healthy}
        await services.bus.publish("endpoint.health", primary=True)
        assert (await receive(ws))["type"] == "endpoint.health"
        assert services.hub.health == {"primary": True}


async def test_many_clients_and_disconnects(api):
    client, services = api
    sockets = [await client.ws_connect("/ws", headers=basic("viewer")) for _ in range(5)]
    for ws in sockets:
        assert (await receive(ws))["type"] == "dashboard"
    assert metrics.WS_CLIENTS._value.get() == 5
    await sockets[0].close()
    await services.bus.publish("report.ready", uid="1.2.5", severity=7)
    for ws in sockets[1:]:
        assert (await receive(ws))["uid"] == "1.2.5"
        await ws.close()
    for _ in range(50):
        if not services.hub.clients:
            break
        await asyncio.sleep(0.02)
    assert not services.hub.clients


class StuckSocket:
    """A WebSocket whose peer stopped reading: sends never complete."""

    def __init__(self):
        self.closed_with = None
        self.sent = []

    async def send_str(self, text):
        await asyncio.Event().wait()

    async def close(self, code=None, message=b""):
        self.closed_with = code


class GoodSocket(StuckSocket):
    async def send_str(self, text):
        self.sent.append(text)


async def test_a_slow_client_is_dropped_not_waited_for():
    async def state():
        return {"queue": {}}

    hub = Hub(LocalBus(), state, outbox=4)
    stuck, good = Client(StuckSocket(), asyncio.Queue(4)), Client(GoodSocket(), asyncio.Queue(4))
    hub.clients = {stuck, good}
    senders = [asyncio.create_task(hub._send(c)) for c in (stuck, good)]
    dropped = metrics.WS_DROPPED._value.get()
    for i in range(10):
        hub.broadcast({"type": "x", "i": i})
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert stuck not in hub.clients and good in hub.clients
    assert stuck.ws.closed_with == 1008
    assert [json.loads(t)["i"] for t in good.ws.sent] == list(range(10))
    assert metrics.WS_DROPPED._value.get() == dropped + 1
    for task in senders:
        task.cancel()


async def test_a_page_of_another_site_cannot_open_the_live_feed(api):
    client, _ = api
    host = f"{client.host}:{client.port}"
    refused = await client.get("/ws", headers={**basic("viewer"),
                                               "Origin": "https://evil.example",
                                               "Connection": "Upgrade", "Upgrade": "websocket",
                                               "Sec-WebSocket-Version": "13",
                                               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert refused.status == 403
    async with client.ws_connect("/ws", headers={**basic("viewer"),
                                                 "Origin": f"http://{host}"}) as ws:
        assert (await receive(ws))["type"] == "dashboard"  # the dashboard's own page
