"""Singleton locks: loops that must run once per installation (query/retrieve, FHIR poller,
maintenance) run only in the process that holds the lock; other replicas stand by.

- :class:`LocalLocks` (SQLite, one process): an asyncio lock per name.
- :class:`PostgresLocks`: a session-level advisory lock held on a dedicated connection.
  The connection is checked every ``check_interval`` seconds; if it is lost (database
  restart, network), the guarded coroutine is cancelled and the lock is sought again, so a
  standby replica can take over. Between the loss and the check, two holders can overlap
  for at most ``check_interval``: guarded loops must tolerate that (they are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import psycopg

from xrayvision import metrics
from xrayvision.db.engine import conninfo
from xrayvision.logs import first_line

log = logging.getLogger(__name__)

Guarded = Callable[[], Coroutine[Any, Any, None]]


class SingletonLocks(Protocol):
    async def run(self, name: str, fn: Guarded) -> None:
        """Runs ``fn()`` while holding lock ``name``; waits for the lock first.

        Returns when ``fn`` returns; ``fn``'s exceptions propagate (the lock is released).
        """


class LocalLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    async def run(self, name: str, fn: Guarded) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            metrics.SINGLETON_HELD.labels(name).set(1)
            try:
                await fn()
            finally:
                metrics.SINGLETON_HELD.labels(name).set(0)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    digest = hashlib.sha256(f"xrayvision:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLocks:
    def __init__(self, url: str, *, retry_interval: float = 5.0,
                 check_interval: float = 5.0) -> None:
        self._conninfo = conninfo(url)
        self.retry_interval = retry_interval
        self.check_interval = check_interval

    async def run(self, name: str, fn: Guarded) -> None:
        key = lock_key(name)
        while True:
            conn: psycopg.AsyncConnection | None = None
            task: asyncio.Task | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=10,
                    keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                    application_name=f"xrayvision-lock-{name}",
                )
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = await cur.fetchone()
                if not row or not row[0]:
                    await conn.close()
                    conn = None
                    await asyncio.sleep(self.retry_interval)
                    continue
                metrics.SINGLETON_HELD.labels(name).set(1)
                log.info("singleton lock acquired", extra={"lock": name})
                task = asyncio.create_task(fn(), name=f"singleton-{name}")
                while True:
                    done, _ = await asyncio.wait({task}, timeout=self.check_interval)
                    if done:
                        return task.result()  # fn's exception propagates
                    await conn.execute("SELECT 1")  # raises when the connection is gone
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                if task is not None:
                    log.warning("singleton lock lost; stopping the guarded loop",
                                extra={"lock": name, "error": first_line(exc)})
                else:
                    log.warning("singleton lock unavailable; retrying",
                                extra={"lock": name, "error": first_line(exc)})
            finally:
                metrics.SINGLETON_HELD.labels(name).set(0)
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                if conn is not None and not conn.closed:
                    with contextlib.suppress(Exception):
                        await conn.close()  # closing the session releases the lock
            # Reached only after a lost or unavailable connection: back off, then retry.
            await asyncio.sleep(self.retry_interval)


def make_locks(database_url: str) -> SingletonLocks:
    if database_url.startswith("postgresql"):
        return PostgresLocks(database_url)
    return LocalLocks()
