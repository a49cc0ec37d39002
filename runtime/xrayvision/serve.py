"""``xrayvision serve``: runs the chosen roles as asyncio tasks in one process.

Start-up order: the HTTP server first (liveness answers at once, readiness says why it is
not ready), then the database with retries and back-off, the schema check (refuse to run
on an outdated schema unless ``--migrate``), the event bus, the roles and the singleton
maintenance loop. A role that fails is restarted in-process (:func:`supervise`; a
database outage of any length is waited out). SIGTERM or SIGINT: roles are cancelled
(each releases what it claimed), any exam still leased by this process is released, the
bus and the pool are closed, all within ``[server] shutdown_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from xrayvision import __version__, metrics
from xrayvision.ai.probes import ProbeSetError
from xrayvision.ai.prompts import PromptError
from xrayvision.config import Settings
from xrayvision.db import queue
from xrayvision.db.engine import Database, DatabaseOptions, is_transient
from xrayvision.db.migrate import schema_state, upgrade
from xrayvision.events import make_bus, process_id
from xrayvision.images import make_store
from xrayvision.locks import make_locks
from xrayvision.logs import first_line
from xrayvision.maintenance import Maintenance
from xrayvision.roles import ROLES
from xrayvision.runtime import Runtime, model_health, open_runtime
from xrayvision.web.app import init_app
from xrayvision.web.health import Readiness

log = logging.getLogger(__name__)


class StartupError(Exception):
    """Start-up cannot continue (outdated schema without --migrate); the message says why."""


def database_options(settings: Settings) -> DatabaseOptions:
    return DatabaseOptions(
        url=settings.database_url,
        pool_size=settings.database.pool_size,
        connect_timeout=settings.database.connect_timeout,
        sqlite_busy_timeout=settings.database.sqlite_busy_timeout,
    )


def open_database(settings: Settings) -> Database:
    if not settings.database.url:
        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(database_options(settings))


async def connect_with_backoff(db: Database, readiness: Readiness,
                               max_delay: float = 30.0) -> None:
    """Waits until the database answers, retrying with back-off; readiness stays false."""
    delay = 0.5
    while True:
        try:
            await db.run_in_pool(db.ping)
            return
        except Exception as exc:  # noqa: BLE001 - every failure here means "retry"
            reason = f"database unreachable: {first_line(exc)}"
            readiness.set(False, reason)
            log.warning("database unreachable at start-up; retrying",
                        extra={"retry_in": round(delay, 1), "error": reason})
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


RESTART_LIMIT = 5  # failures of one role (not counting database outages) ...
RESTART_WINDOW = 600.0  # ... within this many seconds end the process


async def supervise(role: str, run: Callable[[], Awaitable[None]], db: Database, *,
                    before_restart: Callable[[], None] | None = None,
                    limit: int = RESTART_LIMIT, window: float = RESTART_WINDOW) -> None:
    """Runs a role and restarts it in-process when it ends with an error: at once once
    the database answers again when the database was the cause (an outage of any length
    is waited out and not counted), else after a back-off (1 s doubling to 60 s). Raises
    the role's error after ``limit`` counted failures within ``window`` seconds: the
    process then exits and its supervisor (Kubernetes) starts a new one."""
    failures: list[float] = []
    delay = 1.0
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except Exception as exc:
            metrics.ROLE_UP.labels(role).set(0)
            metrics.ROLE_RESTARTS.labels(role).inc()
            outage = isinstance(exc, SQLAlchemyError) and is_transient(exc)
            if not outage:
                try:
                    await db.run_in_pool(db.ping)
                except SQLAlchemyError:
                    outage = True  # the database went away too: taken as the cause
            if outage:
                log.warning("role stopped by a database outage; restarting it once the "
                            "database answers", extra={"role": role, "error": first_line(exc)})
                await db.wait_until_up()
            else:
                now = time.monotonic()
                failures = [t for t in failures if now - t < window] + [now]
                if len(failures) >= limit:
                    log.error("role keeps failing; stopping the process",
                              extra={"role": role, "failures": len(failures)})
                    raise
                if now - started > 60:
                    delay = 1.0  # it had been running well: no long back-off
                log.error("role stopped with an error; restarting it",
                          extra={"role": role, "retry_in": delay}, exc_info=exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
            if before_restart is not None:
                before_restart()
            metrics.ROLE_UP.labels(role).set(1)


def role_tasks(rt: Runtime) -> dict[str, Callable[[], Awaitable[None]]]:
    """The coroutine each selected role runs, and the model's health loop (one per
    process) when a role here calls the model."""
    tasks: dict[str, Callable[[], Awaitable[None]]] = {
        role: functools.partial(ROLES[role], rt) for role in rt.settings.server.roles}
    if rt.model is not None:
        tasks["model-health"] = functools.partial(model_health, rt)
    return tasks


async def serve(settings: Settings, *, migrate: bool = False,
                stop: asyncio.Event | None = None) -> int:
    """Runs until SIGTERM/SIGINT (or ``stop`` is set); returns the exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    metrics.BUILD.info({"version": __version__})
    log.info("starting", extra={"version": __version__, "roles": ",".join(settings.server.roles)})
    for warning in settings.warnings:
        log.warning("configuration warning", extra={"detail": warning})

    readiness = Readiness(disks=settings.written_disks(Path(tempfile.gettempdir())),
                          min_free=settings.server.min_free_mb * 2**20)
    runner = web.AppRunner(init_app(settings, readiness), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.web.host, settings.web.port)
    await site.start()
    log.info("http listening", extra={"host": settings.web.host, "port": settings.web.port})

    db = open_database(settings)
    runtime: Runtime | None = None
    resources = contextlib.AsyncExitStack()  # the runtime's HTTP session
    tasks: list[asyncio.Task] = []
    try:
        connecting = asyncio.create_task(connect_with_backoff(db, readiness))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            return 0
        stopping.cancel()

        state = await db.run_in_pool(schema_state, db.engine)
        if not state.is_current:
            if not migrate:
                readiness.set(False, state.describe())
                raise StartupError(state.describe())
            state = await db.run_in_pool(upgrade, db.engine)
            log.info("database migrated", extra={"schema": ",".join(state.head)})
        readiness.db = db
        readiness.set(True, state.describe())

        bus = make_bus(db.url)
        await bus.start()
        try:
            runtime = await resources.enter_async_context(open_runtime(
                settings, db, bus, make_locks(db.url),
                make_store(settings.images.backend, settings.images_path, db),
                process_id(), runner.app))
        except (PromptError, ProbeSetError) as exc:
            raise StartupError(str(exc)) from None
        maintenance = Maintenance(settings, db, runtime.store)
        tasks.append(asyncio.create_task(supervise(
            "maintenance", lambda: runtime.locks.run("maintenance", maintenance.loop), db),
            name="maintenance"))
        if "ingest" in settings.server.roles:  # ready once its SCP listens
            readiness.role_starting("ingest")
        for role, run in role_tasks(runtime).items():
            if role in ROLES:
                metrics.ROLE_UP.labels(role).set(1)
            restart = (lambda: readiness.role_starting("ingest")) if role == "ingest" else None
            tasks.append(asyncio.create_task(supervise(role, run, db, before_restart=restart),
                                             name=f"role-{role}"))
        log.info("ready", extra={"worker": runtime.worker_id})

        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopping and task.exception() is not None:
                log.error("a role stopped with an error; shutting down",
                          extra={"task": task.get_name()}, exc_info=task.exception())
                return 1
        return 0
    finally:
        log.info("shutting down", extra={"grace_seconds": settings.server.shutdown_grace})
        readiness.set(False, "shutting down")
        await _shutdown(settings, runner, db, runtime, tasks, resources)


async def _shutdown(settings: Settings, runner: web.AppRunner, db: Database,
                    runtime: Runtime | None, tasks: list[asyncio.Task],
                    resources: contextlib.AsyncExitStack) -> None:
    grace = settings.server.shutdown_grace
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=grace * 0.6)
        if pending:
            log.warning("tasks did not stop in time", extra={"count": len(pending)})
    for role in settings.server.roles:
        metrics.ROLE_UP.labels(role).set(0)
    if runtime is not None:
        try:
            released = await asyncio.wait_for(
                db.write(queue.release_worker, runtime.worker_id), timeout=grace * 0.2
            )
            if released:
                log.info("released claimed exams", extra={"count": released})
        except Exception:  # noqa: BLE001 - the lease expires anyway; nothing is lost
            log.warning("could not release claimed exams; their leases will expire")
        await resources.aclose()
        await runtime.bus.close()
    await runner.cleanup()
    await asyncio.to_thread(db.close)
    log.info("stopped")
