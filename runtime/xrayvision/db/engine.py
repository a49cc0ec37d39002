"""The Database handle: engine, sessions, thread offloading and transient-error retries.

Repository functions are plain synchronous ``fn(session, ...)``. DICOM association
threads call :meth:`Database.write_sync`; the event loop awaits :meth:`Database.write` /
:meth:`Database.read`, which run the same function on the handle's own thread pool, so
no database call ever blocks the loop.

SQLite: WAL, ``synchronous=FULL`` (an acknowledged exam survives power loss), a busy
timeout, and ``BEGIN IMMEDIATE`` for write transactions so writers queue on the lock
instead of failing at commit. PostgreSQL: psycopg 3 behind SQLAlchemy's pool with
pre-ping, so connections broken by a server restart are replaced transparently.

Errors::

    sqlalchemy.exc.SQLAlchemyError
      +-- OperationalError / InterfaceError   retried (lost connection, database locked),
      |                                       then re-raised after ``retries`` attempts
      +-- IntegrityError, ...                 raised at once (a bug or a conflict)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

from xrayvision import metrics
from xrayvision.logs import first_line

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DatabaseOptions:
    url: str
    pool_size: int = 5
    connect_timeout: float = 10.0
    sqlite_busy_timeout: float = 30.0
    retries: int = 5


def make_engine(opts: DatabaseOptions) -> Engine:
    """Builds the engine for ``opts.url`` with the per-backend settings described above."""
    if opts.url.startswith("sqlite"):
        engine = create_engine(
            opts.url,
            connect_args={"timeout": opts.sqlite_busy_timeout, "check_same_thread": False},
            pool_size=opts.pool_size,
            max_overflow=opts.pool_size * 2,
            pool_pre_ping=False,
        )
        _sqlite_hooks(engine, opts)
        return engine
    return create_engine(
        opts.url,
        pool_size=opts.pool_size,
        max_overflow=opts.pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": max(1, int(opts.connect_timeout)),
            "application_name": "xrayvision",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    )


def _sqlite_hooks(engine: Engine, opts: DatabaseOptions) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={int(opts.sqlite_busy_timeout * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def conninfo(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq connection string (for raw psycopg)."""
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


SQLITE_FULL = 13
PG_DISK_FULL = "53100"


def rowcount(result: Any) -> int:
    """The rows an UPDATE/DELETE matched (``Session.execute`` types its result as a
    plain ``Result``; for these statements it is a ``CursorResult``)."""
    return cast(CursorResult[Any], result).rowcount


def is_disk_full(error: BaseException) -> bool:
    """True when the database could not write for lack of space (SQLite's SQLITE_FULL,
    PostgreSQL's disk_full): transient too, but no retry helps until space is freed."""
    orig = getattr(error, "orig", None)
    return (getattr(orig, "sqlite_errorcode", None) == SQLITE_FULL
            or getattr(orig, "sqlstate", None) == PG_DISK_FULL)


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: a lost/refused connection or a busy SQLite lock."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, exc.OperationalError | exc.InterfaceError)


class Database:
    """One per process: owns the engine, the session factories and the DB thread pool."""

    def __init__(self, opts: DatabaseOptions) -> None:
        self.opts = opts
        self.url = opts.url
        self.engine = make_engine(opts)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        writer = self.engine.execution_options(sqlite_immediate=True)
        self._write = sessionmaker(writer, expire_on_commit=False)
        # One snapshot for a whole read (PostgreSQL's READ COMMITTED gives each statement
        # its own; a SQLite read transaction is one snapshot already).
        snapshot = (self.engine if self.is_sqlite
                    else self.engine.execution_options(isolation_level="REPEATABLE READ"))
        self._snapshot = sessionmaker(snapshot, expire_on_commit=False)
        self._pool = ThreadPoolExecutor(
            max_workers=opts.pool_size, thread_name_prefix="db"
        )

    # -- synchronous (threads) ---------------------------------------------------------------

    def read_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs ``fn(session, *args)`` in a read transaction, with retries."""
        return self._run(self._read, fn, args, kwargs)

    def snapshot_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """As :meth:`read_sync`, every statement of ``fn`` seeing the same snapshot of
        the database (figures that must agree with each other)."""
        return self._run(self._snapshot, fn, args, kwargs)

    def write_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs ``fn(session, *args)`` in a write transaction and commits, with retries."""
        return self._run(self._write, fn, args, kwargs)

    def _run(self, factory: sessionmaker[Session], fn: Callable[..., T], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> T:
        name = getattr(fn, "__name__", "op")
        delay = 0.05
        for attempt in range(1, self.opts.retries + 1):
            start = time.perf_counter()
            try:
                with factory() as session, session.begin():
                    result = fn(session, *args, **kwargs)
                metrics.DB_OPERATION_SECONDS.labels(name).observe(time.perf_counter() - start)
                return result
            except exc.SQLAlchemyError as error:
                transient = is_transient(error)
                metrics.DB_ERRORS.labels(name, "transient" if transient else "fatal").inc()
                if not transient or attempt == self.opts.retries:
                    raise
                metrics.DB_RETRIES.inc()
                log.warning(
                    "database operation retried",
                    extra={"operation": name, "attempt": attempt, "error": first_line(error)},
                )
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 4, 2.0)
        raise AssertionError("unreachable")

    # -- asynchronous (event loop) -----------------------------------------------------------

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.run_in_pool(lambda: self.read_sync(fn, *args, **kwargs))

    async def snapshot(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.run_in_pool(lambda: self.snapshot_sync(fn, *args, **kwargs))

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self.run_in_pool(lambda: self.write_sync(fn, *args, **kwargs))

    async def run_in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """Runs any blocking callable on the DB pool.

        Cancelling the caller cannot stop the thread, so the cancellation waits until the
        call has finished: whatever runs after it (releasing this process's claims at
        shutdown) then sees its effect, e.g. a claim that committed meanwhile.
        """
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait({future})
            raise

    async def write_patiently(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`write`, but a database outage (a transient error left after the
        retries) is waited out and the write made again, however long it takes; other
        errors raise."""
        return await self._patiently(self.write, fn, args, kwargs)

    async def read_patiently(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """:meth:`read`, waiting out a database outage as :meth:`write_patiently`."""
        return await self._patiently(self.read, fn, args, kwargs)

    async def _patiently(self, call: Callable[..., Awaitable[T]], fn: Callable[..., T],
                         args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        while True:
            try:
                return await call(fn, *args, **kwargs)
            except exc.SQLAlchemyError as error:
                if not is_transient(error):
                    raise
            await self.wait_until_up()

    async def wait_until_up(self, max_delay: float = 10.0) -> float:
        """Returns once the database answers, retrying with back-off (0.5 s doubling up
        to ``max_delay``); returns the seconds waited. Logs once when it has to wait."""
        started, delay, said = time.monotonic(), 0.5, False
        while True:
            try:
                await self.run_in_pool(self.ping)
                if said:
                    log.info("database reachable again",
                             extra={"waited_s": round(time.monotonic() - started, 1)})
                return time.monotonic() - started
            except exc.SQLAlchemyError as error:
                if not said:
                    log.warning("database unreachable; waiting for it",
                                extra={"error": first_line(error)})
                    said = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    def ping(self) -> None:
        """Raises when the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
        self.engine.dispose()
