"""Event bus: publish/subscribe of small JSON events between roles and pods.

- :class:`LocalBus` delivers inside one process (the embedded SQLite mode).
- :class:`PostgresBus` sends every event through PostgreSQL ``NOTIFY`` and receives them
  with ``LISTEN`` on a dedicated connection, so every process, this one included, sees
  every event in the same way. The listener reconnects by itself (with back-off) after a
  database restart and then delivers a ``bus.reconnected`` event.

A change and its event go together: a writer calls ``bus.publish_in(session, ...)``
inside the transaction that makes the change. Both buses then deliver the event only
once the transaction commits (PostgreSQL: the NOTIFY is part of it; in-process: after
the commit), never when it rolls back, so a subscriber that reads the database on an
event finds the change. ``publish`` is for news with no transaction (model health).

Events are hints, not the record: they carry ids and small fields (a NOTIFY payload must
stay under 8,000 bytes), and every consumer also sweeps the database periodically. A lost
event therefore delays work and never loses it. A subscriber that falls behind has events
dropped and receives ``bus.gap`` so it knows to resynchronise; it never slows the others.
The event types and their payloads are the constants below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from sqlalchemy import event as sa_event
from sqlalchemy import text
from sqlalchemy.orm import Session

from xrayvision import metrics
from xrayvision.db.engine import conninfo
from xrayvision.logs import first_line

log = logging.getLogger(__name__)

CHANNEL = "xrayvision_events"
MAX_PAYLOAD = 7900

# Event types (the payload's fields after each).
EXAM_QUEUED = "exam.queued"  # uid, region, priority: converted, waiting for the model
EXAM_UPDATED = "exam.updated"  # uid, status: converted into ignore or error
EXAM_REQUEUED = "exam.requeued"  # uid: a user asked the model to read it again
EXAM_REVIEWED = "exam.reviewed"  # uid, correct: a user reviewed the AI report
REPORT_READY = "report.ready"  # uid, severity, positive, region: the AI report is stored
# (read per study: uid is the study's key, region its regions, images the exams it covers)
RAD_REPORT_READY = "rad_report.ready"  # uid, region, severity, positive, checked: the
#   radiologist's report is stored (or checked by the model later)
ENDPOINT_HEALTH = "endpoint.health"  # {endpoint name: {healthy, error, error_at}}: model
#   endpoints' health and last error, when either changes
MODEL_PROBE = "model.probe"  # endpoint, url, model, passed, reason, at, probe_set: a
#   known-answer probe verdict (xrayvision.ai.probes); every model client follows it
GAP = "bus.gap"  # (none): this subscriber missed events; resynchronise from the database
RECONNECTED = "bus.reconnected"  # (none): the listener was away; resynchronise
_PENDING = "xrayvision.events"  # session.info key: events waiting for the commit


def process_id() -> str:
    """An id for this process, unique across pods and restarts."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class EventTooLarge(ValueError):
    """The encoded event exceeds what PostgreSQL NOTIFY carries: send ids, not documents."""


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    def encode(self) -> str:
        text = json.dumps(
            {"type": self.type, "data": self.data, "origin": self.origin},
            separators=(",", ":"), ensure_ascii=False, default=str,
        )
        if len(text.encode()) > MAX_PAYLOAD:
            raise EventTooLarge(f"event {self.type} is {len(text.encode())} bytes encoded")
        return text

    @classmethod
    def decode(cls, text: str) -> Event:
        """Parses an encoded event; raises ValueError when it is not one."""
        body = json.loads(text)
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise ValueError("not an event")
        data = body.get("data")
        return cls(type=body["type"], data=data if isinstance(data, dict) else {},
                   origin=str(body.get("origin", "")))


class Subscription:
    """A bounded inbox of events; iterate it with ``async for``."""

    def __init__(self, bus: LocalBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._gap = False

    def offer(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._gap = True
            metrics.EVENTS_DROPPED.labels("slow_subscriber").inc()

    async def get(self) -> Event:
        if self._gap and self._queue.empty():
            self._gap = False
            return Event(GAP)
        # What was queued before the overflow comes first, then the gap notice.
        return await self._queue.get()

    def get_nowait(self) -> Event | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if self._gap:
                self._gap = False
                return Event(GAP)
            return None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        while True:
            yield await self.get()

    def close(self) -> None:
        self._bus._subscriptions.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus(Protocol):
    """What the roles use of a bus (:class:`LocalBus`, :class:`PostgresBus`)."""

    origin: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def subscribe(self, maxsize: int = 1000) -> Subscription: ...

    def publish_in(self, session: Session, type_: str, **data: Any) -> None:
        """Sends the event with ``session``'s transaction: delivered once it commits,
        never if it rolls back. Callable from any thread (database threads)."""

    async def publish(self, type_: str, **data: Any) -> None:
        """Sends the event now (news without a transaction). Event loop thread only."""


class LocalBus:
    """In-process bus. ``publish`` and ``subscribe`` from the event loop's thread;
    ``publish_in`` from any (delivery is handed to the loop)."""

    def __init__(self, origin: str | None = None) -> None:
        self.origin = origin or process_id()
        self._subscriptions: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._subscriptions.clear()

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscriptions.add(sub)
        return sub

    def _deliver(self, event: Event) -> None:
        metrics.EVENTS_RECEIVED.labels(event.type).inc()
        for sub in list(self._subscriptions):
            sub.offer(event)

    async def publish(self, type_: str, **data: Any) -> None:
        """Sends an event to every subscriber (of every process, for PostgresBus)."""
        event = Event(type_, data, self.origin)
        event.encode()  # same size rule as PostgreSQL, so code that works here works there
        metrics.EVENTS_PUBLISHED.labels(type_).inc()
        self._deliver(event)

    def publish_in(self, session: Session, type_: str, **data: Any) -> None:
        event = Event(type_, data, self.origin)
        event.encode()
        pending = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = []
            sa_event.listen(session, "after_commit", self._committed)
            sa_event.listen(session, "after_rollback", self._rolled_back)
        pending.append(event)

    def _committed(self, session: Session) -> None:
        events = session.info.pop(_PENDING, [])
        loop = self._loop
        if loop is None or loop.is_closed():
            metrics.EVENTS_DROPPED.labels("loop_closed").inc(len(events))
            return
        for event in events:
            loop.call_soon_threadsafe(self._publish_now, event)

    @staticmethod
    def _rolled_back(session: Session) -> None:
        session.info.pop(_PENDING, None)

    def _publish_now(self, event: Event) -> None:
        metrics.EVENTS_PUBLISHED.labels(event.type).inc()
        self._deliver(event)


class PostgresBus(LocalBus):
    """LISTEN/NOTIFY bus; reconnects by itself."""

    def __init__(self, url: str, origin: str | None = None, *,
                 reconnect_max: float = 10.0) -> None:
        super().__init__(origin)
        self._conninfo = conninfo(url)
        self._reconnect_max = reconnect_max
        self._publisher: psycopg.AsyncConnection | None = None
        self._publish_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    async def start(self) -> None:
        await super().start()
        self._listener = asyncio.create_task(self._listen(), name="event-bus-listen")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._publisher is not None:
            await self._publisher.close()
        await super().close()

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=10,
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
        )

    async def _listen(self) -> None:
        delay, first = 0.2, True
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    delay = 0.2
                    if not first:
                        metrics.EVENT_BUS_RECONNECTS.inc()
                        log.info("event bus reconnected")
                        self._deliver(Event(RECONNECTED, {}, self.origin))
                    first = False
                    async for note in conn.notifies():
                        try:
                            self._deliver(Event.decode(note.payload))
                        except ValueError:
                            log.warning("ignored a malformed event on the bus")
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("event bus listener lost its connection; reconnecting",
                            extra={"error": first_line(exc),
                                   "retry_in": round(delay, 2)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max)

    def publish_in(self, session: Session, type_: str, **data: Any) -> None:
        # The NOTIFY is part of the transaction: PostgreSQL delivers it at commit, and
        # never if the transaction rolls back (no extra round trip either).
        payload = Event(type_, data, self.origin).encode()
        session.execute(text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": CHANNEL, "payload": payload})
        metrics.EVENTS_PUBLISHED.labels(type_).inc()

    async def publish(self, type_: str, **data: Any) -> None:
        payload = Event(type_, data, self.origin).encode()
        async with self._publish_lock:
            for attempt in (1, 2):
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = await self._connect()
                    await self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                    metrics.EVENTS_PUBLISHED.labels(type_).inc()
                    return
                except (psycopg.Error, OSError) as exc:
                    if self._publisher is not None:
                        await self._publisher.close()
                    self._publisher = None
                    if attempt == 2:
                        metrics.EVENTS_DROPPED.labels("bus_down").inc()
                        log.warning("event not published: database unreachable; the next "
                                    "sweep picks the work up",
                                    extra={"type": type_, "error": first_line(exc)})


def make_bus(database_url: str) -> Bus:
    """PostgresBus for a PostgreSQL database, LocalBus for SQLite."""
    if database_url.startswith("postgresql"):
        return PostgresBus(database_url)
    return LocalBus()
