import asyncio

import psycopg

from xrayvision.db.engine import conninfo
from xrayvision.locks import LocalLocks, PostgresLocks, lock_key


def test_lock_keys_are_stable_and_distinct():
    assert lock_key("fhir") == lock_key("fhir")
    assert lock_key("fhir") != lock_key("maintenance")
    assert -(2**63) <= lock_key("fhir") < 2**63


async def test_local_lock_runs_one_at_a_time():
    locks, running, peak = LocalLocks(), 0, 0

    async def guarded():
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    await asyncio.gather(*(locks.run("x", guarded) for _ in range(3)))
    assert peak == 1


async def test_postgres_lock_has_one_holder_and_hands_over(pg_url):
    first = PostgresLocks(pg_url, retry_interval=0.1, check_interval=0.1)
    second = PostgresLocks(pg_url, retry_interval=0.1, check_interval=0.1)
    started: list[str] = []
    release_first = asyncio.Event()

    async def loop(name, until=None):
        started.append(name)
        await (until.wait() if until else asyncio.Event().wait())

    one = asyncio.create_task(first.run("poller", lambda: loop("first", release_first)))
    await asyncio.sleep(0.3)
    two = asyncio.create_task(second.run("poller", lambda: loop("second")))
    await asyncio.sleep(0.5)
    assert started == ["first"], "the standby waits"
    release_first.set()
    await asyncio.wait_for(one, 5)
    for _ in range(50):
        if started == ["first", "second"]:
            break
        await asyncio.sleep(0.1)
    assert started == ["first", "second"]
    two.cancel()


async def test_postgres_lock_lost_connection_stops_the_loop_and_standby_takes_over(pg_url):
    holder = PostgresLocks(pg_url, retry_interval=5.0, check_interval=0.1)
    standby = PostgresLocks(pg_url, retry_interval=0.1, check_interval=0.1)
    events: list[str] = []

    async def loop(name):
        events.append(f"{name} started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append(f"{name} cancelled")
            raise

    a = asyncio.create_task(holder.run("qr", lambda: loop("holder")))
    await asyncio.sleep(0.3)
    b = asyncio.create_task(standby.run("qr", lambda: loop("standby")))
    await asyncio.sleep(0.3)
    assert events == ["holder started"]
    async with await psycopg.AsyncConnection.connect(conninfo(pg_url), autocommit=True) as c:
        await c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
        )
    for _ in range(50):
        if {"standby started", "holder cancelled"} <= set(events):
            break
        await asyncio.sleep(0.1)
    assert sorted(events) == ["holder cancelled", "holder started", "standby started"]
    a.cancel()
    b.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
