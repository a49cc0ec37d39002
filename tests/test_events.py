import asyncio

import pytest
from sqlalchemy.orm import Session

from xrayvision.db import repo
from xrayvision.events import (
    EXAM_QUEUED,
    GAP,
    RECONNECTED,
    REPORT_READY,
    Event,
    EventTooLarge,
    LocalBus,
    PostgresBus,
    make_bus,
)


async def next_event(sub, wait=5.0, skip=()):
    while True:
        event = await asyncio.wait_for(sub.get(), wait)
        if event.type not in skip:
            return event


def test_event_round_trip_and_bad_input():
    event = Event("exam.queued", {"uid": "1.2.3", "region": "chest"}, "host:1")
    assert Event.decode(event.encode()) == event
    for bad in ("not json", "[]", '{"data": {}}'):
        with pytest.raises(ValueError):
            Event.decode(bad)
    with pytest.raises(EventTooLarge):
        Event("x", {"blob": "a" * 9000}).encode()


async def test_local_bus_fans_out_to_every_subscriber():
    bus = LocalBus()
    await bus.start()
    first, second = bus.subscribe(), bus.subscribe()
    await bus.publish("exam.queued", uid="1.2")
    for sub in (first, second):
        event = await next_event(sub)
        assert event.type == "exam.queued" and event.data == {"uid": "1.2"}
        assert event.origin == bus.origin
    second.close()
    await bus.publish("exam.updated", uid="1.2")
    assert (await next_event(first)).type == "exam.updated"
    assert second.get_nowait() is None


async def test_slow_subscriber_gets_a_gap_and_does_not_block_others():
    bus = LocalBus()
    await bus.start()
    slow, fast = bus.subscribe(maxsize=2), bus.subscribe(maxsize=100)
    for i in range(5):
        await bus.publish("exam.queued", n=i)
    assert [(await next_event(fast)).data["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
    got = [await next_event(slow) for _ in range(3)]
    assert [e.data.get("n") for e in got[:2]] == [0, 1]
    assert got[2].type == GAP


async def test_make_bus_by_url():
    assert type(make_bus("sqlite:///x.db")) is LocalBus
    assert type(make_bus("postgresql+psycopg://u@h/db")) is PostgresBus


async def test_postgres_bus_between_two_connections(pg_url):
    one, two = PostgresBus(pg_url), PostgresBus(pg_url)
    for bus in (one, two):
        await bus.start()
        await asyncio.wait_for(bus.listening.wait(), 10)
    try:
        sub_one, sub_two = one.subscribe(), two.subscribe()
        await one.publish("report.ready", uid="1.2.3", severity=7)
        for sub in (sub_one, sub_two):  # the other "pod" and the publisher itself
            event = await next_event(sub)
            assert event.type == "report.ready"
            assert event.data == {"uid": "1.2.3", "severity": 7}
            assert event.origin == one.origin
    finally:
        await one.close()
        await two.close()


async def test_postgres_bus_ignores_malformed_notifications(pg_url):
    import psycopg

    from xrayvision.db.engine import conninfo
    from xrayvision.events import CHANNEL

    bus = PostgresBus(pg_url)
    await bus.start()
    await asyncio.wait_for(bus.listening.wait(), 10)
    try:
        sub = bus.subscribe()
        async with await psycopg.AsyncConnection.connect(conninfo(pg_url), autocommit=True) as c:
            await c.execute("SELECT pg_notify(%s, 'garbage')", (CHANNEL,))
        await bus.publish("exam.queued", uid="1")
        assert (await next_event(sub)).data == {"uid": "1"}
    finally:
        await bus.close()


async def test_postgres_bus_survives_a_server_restart(own_pg):
    url = own_pg.url().replace("postgresql://", "postgresql+psycopg://")
    one, two = PostgresBus(url, reconnect_max=0.5), PostgresBus(url, reconnect_max=0.5)
    for bus in (one, two):
        await bus.start()
        await asyncio.wait_for(bus.listening.wait(), 10)
    try:
        sub = two.subscribe()
        await one.publish("exam.queued", uid="before")
        assert (await next_event(sub)).data == {"uid": "before"}

        await asyncio.to_thread(own_pg.restart)
        assert (await next_event(sub, wait=30)).type == RECONNECTED
        await asyncio.wait_for(one.listening.wait(), 30)
        await one.publish("exam.queued", uid="after")  # the publisher reconnects too
        assert (await next_event(sub, skip=(RECONNECTED,))).data == {"uid": "after"}
    finally:
        await one.close()
        await two.close()


async def test_publish_while_database_is_down_is_dropped_not_raised(own_pg):
    url = own_pg.url().replace("postgresql://", "postgresql+psycopg://")
    bus = PostgresBus(url, reconnect_max=0.5)
    await bus.start()
    await asyncio.wait_for(bus.listening.wait(), 10)
    try:
        await asyncio.to_thread(own_pg.stop)
        await bus.publish("exam.queued", uid="lost")  # logged and counted, no exception
    finally:
        await bus.close()


async def test_publish_in_is_delivered_once_after_commit_never_after_rollback(db):
    """The same writer path on both backends (in-process after the commit; PostgreSQL's
    NOTIFY at the commit): each event arrives exactly once, the change it announces is
    visible when it arrives, and a rolled-back change announces nothing."""
    bus = make_bus(db.url)
    await bus.start()
    if isinstance(bus, PostgresBus):
        await asyncio.wait_for(bus.listening.wait(), 10)
    try:
        sub = bus.subscribe()

        def change(session: Session, key: str, fail: bool = False) -> None:
            repo.set_state(session, key, "written")
            bus.publish_in(session, REPORT_READY, uid=key)
            bus.publish_in(session, EXAM_QUEUED, uid=key)
            if fail:
                raise RuntimeError("abort the transaction")

        with pytest.raises(RuntimeError):
            await db.write(change, "1.1", fail=True)
        await db.write(change, "1.2")
        seen = []
        for _ in range(2):
            event = await next_event(sub)
            seen.append((event.type, event.data["uid"], event.origin))
            # the change is committed when its event arrives
            assert await db.read(repo.get_state, event.data["uid"]) == "written"
        assert seen == [(REPORT_READY, "1.2", bus.origin), (EXAM_QUEUED, "1.2", bus.origin)]
        await asyncio.sleep(0.3)
        assert sub.get_nowait() is None, "nothing more: not the rolled-back change's"
        assert await db.read(repo.get_state, "1.1") is None
    finally:
        await bus.close()
