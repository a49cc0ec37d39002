import threading
import time

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from support import records
from xrayvision import metrics
from xrayvision.db import queue, repo
from xrayvision.db.engine import Database, DatabaseOptions, conninfo
from xrayvision.db.migrate import upgrade
from xrayvision.db.models import DONE, State
from xrayvision.db.repo import ExamInfo


def test_conninfo():
    assert conninfo("postgresql+psycopg://u:p@h:5/db") == "postgresql://u:p@h:5/db"
    assert conninfo("postgres://h/db") == "postgresql://h/db"


def test_sqlite_pragmas(sqlite_db):
    with sqlite_db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_integrity_errors_are_not_retried(db):
    db.write_sync(records.add_exam, ExamInfo(uid="1.1"))
    before = metrics.DB_RETRIES._value.get()
    with pytest.raises(IntegrityError):
        db.write_sync(records.save_ai_report, "1.1", confidence=500)
    assert metrics.DB_RETRIES._value.get() == before


def _db_on(server) -> Database:
    db = Database(DatabaseOptions(url=server.url().replace("postgresql://",
                                                           "postgresql+psycopg://")))
    upgrade(db.engine)
    return db


def test_pool_survives_a_database_restart(own_pg):
    db = _db_on(own_pg)
    try:
        db.write_sync(records.add_exam, ExamInfo(uid="2.1", status="queued"))
        db.write_sync(records.add_exam, ExamInfo(uid="2.2", status="queued"))
        claimed = db.write_sync(queue.claim, "w", 60)
        own_pg.restart()  # every pooled connection is now dead
        db.write_sync(queue.complete, claimed.uid, "w")
        assert db.write_sync(queue.claim, "w", 60) is not None
        assert db.read_sync(repo.queue_counts)[DONE] == 1
    finally:
        db.close()


def test_operation_waits_out_a_short_outage(own_pg):
    db = _db_on(own_pg)
    try:
        db.write_sync(records.add_exam, ExamInfo(uid="3.1", status="queued"))
        own_pg.stop()
        threading.Timer(0.5, own_pg.start).start()
        started = time.monotonic()
        before = metrics.DB_RETRIES._value.get()
        exam = db.write_sync(queue.claim, "w", 60)  # retried with back-off until it is back
        assert exam.uid == "3.1"
        assert metrics.DB_RETRIES._value.get() > before
        assert time.monotonic() - started < 30
    finally:
        db.close()


async def test_cancelled_write_finishes_before_the_cancellation_ends(sqlite_db):
    import asyncio

    from xrayvision.db.models import QUEUED

    sqlite_db.write_sync(records.add_exam, ExamInfo(uid="4.1", status=QUEUED))

    def slow_claim(session):
        time.sleep(0.3)
        return queue.claim(session, "w", 60)

    task = asyncio.create_task(sqlite_db.write(slow_claim))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The claim committed before the cancellation returned, so a release now finds it.
    assert sqlite_db.write_sync(queue.release_worker, "w") == 1


def test_a_snapshot_read_sees_one_state_of_the_database(db):
    """Figures that must agree (one statistics response) come from one snapshot: a write
    committed between two of its statements is not seen by the second."""
    def count(session):
        return session.scalar(select(func.count()).select_from(State))

    def read_twice(session):
        first = count(session)
        db.write_sync(repo.set_state, "snapshot.test", "x")  # another transaction commits
        return first, count(session)

    first, second = db.snapshot_sync(read_twice)
    assert second == first  # the second statement still sees the first one's state
    assert db.read_sync(count) == first + 1
