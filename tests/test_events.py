import asyncio
import threading

import pytest

from xrayvision.events import (
    GAP,
    RECONNECTED,
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


async def test_publish_from_another_thread():
    bus = LocalBus()
    await bus.start()
    sub = bus.subscribe()
    thread = threading.Thread(target=bus.publish_threadsafe, args=("exam.queued",),
                              kwargs={"uid": "9.9"})
    thread.start()
    thread.join()
    assert (await next_event(sub)).data == {"uid": "9.9"}


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


async def test_publish_in_a_transaction_is_delivered_only_on_commit(pg_url):
    from sqlalchemy.orm import Session

    from xrayvision.db.engine import Database, DatabaseOptions

    bus = PostgresBus(pg_url)
    await bus.start()
    await asyncio.wait_for(bus.listening.wait(), 10)
    db = Database(DatabaseOptions(url=pg_url))
    try:
        sub = bus.subscribe()

        def rolled_back(session: Session):
            bus.publish_in(session, "report.ready", uid="never")
            raise RuntimeError("abort the transaction")

        with pytest.raises(RuntimeError):
            db.write_sync(rolled_back)
        db.write_sync(lambda session: bus.publish_in(session, "report.ready", uid="1.2"))
        event = await next_event(sub)
        assert event.data == {"uid": "1.2"} and event.origin == bus.origin
        await asyncio.sleep(0.3)
        assert sub.get_nowait() is None, "the rolled-back event never arrived"
    finally:
        db.close()
        await bus.close()
