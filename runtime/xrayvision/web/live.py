"""``/ws``: live dashboard updates from every pod, through the event bus.

On connect a client gets ``{"type": "dashboard", ...}`` (queue sizes, model endpoint
health, processing state), then every bus event as ``{"type": <event type>, ...data}``
plus a fresh ``dashboard`` after events that change queue sizes (at most once a second).
Each client has a bounded outbox; a client that lets it fill up is closed (1008, "too
slow") instead of slowing the others. aiohttp's heartbeat pings find dead peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

from xrayvision import metrics
from xrayvision.events import (
    ENDPOINT_HEALTH,
    EXAM_QUEUED,
    EXAM_REQUEUED,
    EXAM_UPDATED,
    GAP,
    RECONNECTED,
    REPORT_READY,
    Bus,
    Event,
)
from xrayvision.web.cache import AggregateCache

log = logging.getLogger(__name__)

# Events after which queue sizes may have changed (a missed one: the bus says gap).
QUEUE_EVENTS = {EXAM_QUEUED, EXAM_UPDATED, REPORT_READY, EXAM_REQUEUED, GAP,
                RECONNECTED}


@dataclass(eq=False)
class Client:
    ws: web.WebSocketResponse
    outbox: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(256))


class Hub:
    """Fans bus events out to the connected clients."""

    def __init__(self, bus: Bus, state: Callable[[], Awaitable[dict]], *,
                 outbox: int = 256, heartbeat: float = 30.0,
                 dashboard_interval: float = 1.0, state_ttl: float = 1.0) -> None:
        self.bus = bus
        self.state = state
        # Queue sizes are a GROUP BY over all exams: many clients connecting at once
        # share one computation per state_ttl seconds.
        self._state_cache = AggregateCache(state_ttl, size=1)
        self.outbox = outbox
        self.heartbeat = heartbeat
        self.dashboard_interval = dashboard_interval
        self.clients: set[Client] = set()
        # name -> {healthy, error, error_at}: the relays' last view of each model endpoint
        self.endpoint_state: dict[str, dict] = {}
        self._dashboard_due = asyncio.Event()

    def _offer(self, client: Client, text: str) -> None:
        try:
            client.outbox.put_nowait(text)
        except asyncio.QueueFull:
            metrics.WS_DROPPED.inc()
            self.clients.discard(client)
            asyncio.get_running_loop().create_task(
                client.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too slow"))

    def broadcast(self, message: dict) -> None:
        text = json.dumps(message, separators=(",", ":"), default=str)
        for client in list(self.clients):
            self._offer(client, text)

    def set_endpoints(self, health: dict[str, Any]) -> None:
        """Takes an ``endpoint.health`` payload: {name: {healthy, error, error_at, probe,
        probe_reason, probe_at}}; a
        bare {name: healthy}, as relays of earlier versions send during a rolling
        upgrade, is taken too."""
        keys = ("error", "error_at", "probe", "probe_reason", "probe_at")
        self.endpoint_state = {
            name: {"healthy": bool(h.get("healthy")), **{k: str(h.get(k) or "") for k in keys}}
            if isinstance(h, dict) else {"healthy": bool(h), **dict.fromkeys(keys, "")}
            for name, h in health.items()}

    @property
    def health(self) -> dict[str, bool]:
        return {name: h["healthy"] for name, h in self.endpoint_state.items()}

    def endpoints(self) -> list[dict]:
        """Each model endpoint as the relays last saw it, with its last error."""
        return [{"name": name, **h} for name, h in self.endpoint_state.items()]

    async def dashboard(self) -> dict:
        state = await self._state_cache.get("state", self.state)
        return {"type": "dashboard", **state, "endpoints": self.health,
                "endpoint_errors": {name: {"error": h["error"], "error_at": h["error_at"]}
                                    for name, h in self.endpoint_state.items()},
                # known-answer probes: "failing" is degraded (no reads go there)
                "endpoint_probes": {name: {"probe": h["probe"], "reason": h["probe_reason"],
                                           "at": h["probe_at"]}
                                    for name, h in self.endpoint_state.items()}}

    async def run(self) -> None:
        """Forwards bus events until cancelled."""
        with self.bus.subscribe(maxsize=10000) as events:
            ticker = asyncio.create_task(self._dashboards())
            try:
                async for event in events:
                    self._forward(event)
            finally:
                ticker.cancel()

    def written_elsewhere(self) -> None:
        """Another process wrote exams and could not tell us (SQLite: no shared bus):
        the pages reload their lists as for a queued exam, the queue sizes follow."""
        self.broadcast({"type": EXAM_QUEUED})
        self._dashboard_due.set()

    def _forward(self, event: Event) -> None:
        if event.type == ENDPOINT_HEALTH:
            self.set_endpoints(event.data)
        if event.type not in (GAP, RECONNECTED):
            self.broadcast({"type": event.type, **event.data})
        if event.type in QUEUE_EVENTS or event.type == ENDPOINT_HEALTH:
            self._dashboard_due.set()  # (the header shows the endpoints too)

    async def _dashboards(self) -> None:
        while True:
            await self._dashboard_due.wait()
            self._dashboard_due.clear()
            if self.clients:
                try:
                    self._state_cache.clear()  # after a queue event: fresh sizes
                    self.broadcast(await self.dashboard())
                except Exception:  # noqa: BLE001 - the next event tries again
                    log.warning("dashboard state unavailable", exc_info=True)
            await asyncio.sleep(self.dashboard_interval)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=4096)
        await ws.prepare(request)
        client = Client(ws, asyncio.Queue(self.outbox))
        self.clients.add(client)
        metrics.WS_CLIENTS.set(len(self.clients))
        sender = asyncio.create_task(self._send(client))
        try:
            client.outbox.put_nowait(json.dumps(await self.dashboard(), default=str))
            async for _ in ws:  # clients only listen; reading keeps pings answered
                pass
        finally:
            self.clients.discard(client)
            metrics.WS_CLIENTS.set(len(self.clients))
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _send(self, client: Client) -> None:
        try:
            while True:
                await client.ws.send_str(await client.outbox.get())
        except (ConnectionError, RuntimeError):
            self.clients.discard(client)
            await client.ws.close()

    async def close_all(self) -> None:
        for client in list(self.clients):
            await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
        self.clients.clear()
        metrics.WS_CLIENTS.set(0)
