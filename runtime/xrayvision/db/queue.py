"""The read queues: the ``exams`` table with leases (a read per image) and the
``studies`` table with the same lease columns (a read per study). Every function takes
``table`` (:data:`EXAMS`, the default, or :data:`STUDIES`); "exam" below means a row of
either.

Every function takes the session of a write transaction (``Database.write``) as its first
argument and does not commit; callers combine them with other writes (store a report *and*
complete the exam) so both land or neither does.

Contract:

- :func:`claim` takes the claimable exam (``queued`` or ``requeue``, not deferred by a
  failure) with the highest priority, then the oldest, and leases it to ``worker``.
  PostgreSQL: ``FOR UPDATE SKIP LOCKED`` so concurrent workers never wait for or take the
  same row; SQLite: the caller's ``BEGIN IMMEDIATE`` serialises writers.
- :func:`complete`, :func:`fail`, :func:`release`, :func:`renew` act only on an exam that
  ``worker`` still holds, and raise :class:`LeaseLost` otherwise, so a worker whose lease
  expired (and whose exam was claimed again) cannot overwrite the new holder's work.
- :func:`reclaim_expired` puts exams whose lease ran out back in the queue, counting the
  lost lease as an attempt; workers call it on their periodic sweep.
- Workers say they are alive (:func:`heartbeat`, a row in ``workers``);
  :func:`reclaim_gone` puts back the exams of workers whose heartbeat stopped (or whose
  process on this host is gone) without waiting for their leases, counting an attempt as
  :func:`reclaim_expired` does. The lease then bounds only a worker that hangs while it
  still beats.
- After ``max_attempts`` failures an exam goes to ``error`` with the last reason.
- A study is not claimed while one of its images is received but not converted yet
  (status ``none``): a stat study sent as two images is read once, with both.
- A study whose ``pending`` flag was set while it was read (an image arrived meanwhile)
  goes back to ``queued`` when the read completes (keeping its ``not_before``, the new
  image's quiet time), so the late image is read too, as the next version.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Table,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from xrayvision import metrics
from xrayvision.db.models import (
    CLAIMABLE_SQL,
    DONE,
    ERROR,
    PROCESSING,
    PROCESSING_SQL,
    QUEUED,
    REASON_CODES,
    REQUEUE,
    Exam,
    Study,
    Worker,
    utcnow,
)

MAX_RETRY_DELAY = 3600.0
# Queue statements are Core statements on the table: the queue is the hot path, and the
# ORM's bulk-update machinery costs more than the round trip itself.
EXAMS = cast(Table, Exam.__table__)
STUDIES = cast(Table, Study.__table__)
WORKERS = cast(Table, Worker.__table__)


class LeaseLost(Exception):
    """The exam is no longer held by this worker (lease expired and was reclaimed)."""


def _claim_statement(table: Table, skip_locked: bool) -> Update:
    # Built once per table: the queue is the hot path. The status test is literal SQL,
    # not bound parameters, so PostgreSQL's generic plans can still prove the partial
    # index (ix_exams_claim, ix_studies_claim) applies.
    candidate = (
        select(table.c.uid)
        .where(CLAIMABLE_SQL)
        .where(or_(table.c.not_before.is_(None), table.c.not_before <= bindparam("p_now")))
        .order_by(table.c.priority.desc(), table.c.created)
        .limit(1)
    )
    if table is STUDIES:  # never while an image of it is still being converted
        candidate = candidate.where(~exists().where(
            EXAMS.c.study_uid == table.c.uid, EXAMS.c.status == "none"))
    if skip_locked:
        candidate = candidate.with_for_update(skip_locked=True)
    return (
        update(table)
        .where(table.c.uid == candidate.scalar_subquery())
        .values(
            status=PROCESSING,
            lease_owner=bindparam("p_worker"),
            lease_expires=bindparam("p_expires"),
            updated=bindparam("p_now"),
        )
        .returning(table)
    )


def _complete_statement(table: Table) -> Update:
    held = and_(table.c.uid == bindparam("p_uid"), table.c.status == PROCESSING,
                table.c.lease_owner == bindparam("p_worker"))
    values: dict[str, Any] = {"status": DONE, "not_before": None}
    if "pending" in table.c:  # a study that got an image while it was read: again
        values = {"status": case((table.c.pending, QUEUED), else_=DONE),
                  "not_before": case((table.c.pending, table.c.not_before), else_=None),
                  "pending": False}
    return update(table).where(held).values(
        lease_owner=None, lease_expires=None, error="", reason_code="",
        updated=bindparam("p_now"), **values)


_CLAIM = {(dialect, t.name): _claim_statement(t, dialect == "postgresql")
          for dialect in ("postgresql", "sqlite") for t in (EXAMS, STUDIES)}
_COMPLETE = {t.name: _complete_statement(t) for t in (EXAMS, STUDIES)}


def claim(session: Session, worker: str, lease_seconds: float,
          now: dt.datetime | None = None, *, table: Table = EXAMS) -> Row[Any] | None:
    """Leases the next exam to ``worker``; returns its row (status ``processing``,
    columns as attributes) or None when nothing is claimable."""
    now = now or utcnow()
    conn = session.connection()
    exam = conn.execute(
        _CLAIM[conn.dialect.name, table.name],
        {"p_now": now, "p_worker": worker,
         "p_expires": now + dt.timedelta(seconds=lease_seconds)},
    ).first()
    if exam is not None:
        metrics.QUEUE_TRANSITIONS.labels("claim").inc()
    return exam


def next_due(session: Session, now: dt.datetime | None = None, *,
             table: Table = EXAMS) -> dt.datetime | None:
    """When the next claimable exam waiting for its ``not_before`` (a study's quiet time,
    a failure's back-off) becomes claimable; None when none waits."""
    due: dt.datetime | None = session.connection().scalar(
        select(func.min(table.c.not_before))
        .where(CLAIMABLE_SQL, table.c.not_before > (now or utcnow())))
    return due


def _held(uid: str, worker: str, table: Table = EXAMS) -> ColumnElement[bool]:
    return and_(table.c.uid == uid, table.c.status == PROCESSING, table.c.lease_owner == worker)


def _update_held(session: Session, uid: str, worker: str, table: Table = EXAMS,
                 **values: Any) -> None:
    result = session.connection().execute(
        update(table).where(_held(uid, worker, table)).values(**values))
    if result.rowcount != 1:
        raise LeaseLost(f"exam {uid} is not held by {worker}")


def complete(session: Session, uid: str, worker: str, now: dt.datetime | None = None, *,
             table: Table = EXAMS) -> None:
    """Marks a held exam ``done`` (a study with ``pending`` set: ``queued`` again);
    raises LeaseLost when ``worker`` no longer holds it."""
    result = session.connection().execute(
        _COMPLETE[table.name], {"p_uid": uid, "p_worker": worker, "p_now": now or utcnow()}
    )
    if result.rowcount != 1:
        raise LeaseLost(f"exam {uid} is not held by {worker}")
    metrics.QUEUE_TRANSITIONS.labels("complete").inc()


def retry_delay(base: float, attempts: int) -> float:
    """Exponential back-off after ``attempts`` failures: base, 2·base, 4·base … (capped)."""
    return min(base * float(2 ** max(attempts - 1, 0)), MAX_RETRY_DELAY)


def fail(session: Session, uid: str, worker: str, reason: str, *, max_attempts: int,
         base_delay: float, now: dt.datetime | None = None,
         code: str = "read_failed", table: Table = EXAMS) -> str:
    """Counts a failed attempt; returns the new status.

    Below ``max_attempts`` the exam goes back to ``queued``, deferred by the back-off;
    at ``max_attempts`` it goes to ``error``. Either way ``reason`` and ``code`` (one of
    ``models.REASON_CODES``) say what went wrong last. Raises LeaseLost when ``worker``
    no longer holds the exam.
    """
    if code not in REASON_CODES:
        raise ValueError(f"unknown reason code {code!r}")
    now = now or utcnow()
    attempts = session.connection().scalar(
        select(table.c.attempts).where(_held(uid, worker, table)).with_for_update()
    )
    if attempts is None:
        raise LeaseLost(f"exam {uid} is not held by {worker}")
    attempts += 1
    final = attempts >= max_attempts
    _update_held(
        session, uid, worker, table,
        status=ERROR if final else QUEUED,
        attempts=attempts,
        error=reason[:2000],
        reason_code=code,
        lease_owner=None,
        lease_expires=None,
        not_before=None if final else now + dt.timedelta(seconds=retry_delay(base_delay, attempts)),
        updated=now,
    )
    metrics.QUEUE_TRANSITIONS.labels("error" if final else "fail").inc()
    return ERROR if final else QUEUED


def release(session: Session, uid: str, worker: str, now: dt.datetime | None = None, *,
            table: Table = EXAMS) -> None:
    """Gives a held exam back to the queue without counting an attempt (shutdown, both
    model endpoints down). Raises LeaseLost when ``worker`` no longer holds it."""
    _update_held(
        session, uid, worker, table,
        status=QUEUED, lease_owner=None, lease_expires=None, updated=now or utcnow(),
    )
    metrics.QUEUE_TRANSITIONS.labels("release").inc()


def release_worker(session: Session, worker: str, now: dt.datetime | None = None, *,
                   table: Table = EXAMS) -> int:
    """Releases every exam ``worker`` holds; returns how many (used at shutdown)."""
    result = session.connection().execute(
        update(table)
        .where(table.c.status == PROCESSING, table.c.lease_owner == worker)
        .values(status=QUEUED, lease_owner=None, lease_expires=None, updated=now or utcnow())
    )
    metrics.QUEUE_TRANSITIONS.labels("release").inc(result.rowcount)
    return result.rowcount


def renew(session: Session, uid: str, worker: str, lease_seconds: float,
          now: dt.datetime | None = None, *, table: Table = EXAMS) -> None:
    """Extends the lease during a long call; raises LeaseLost when it was already lost."""
    now = now or utcnow()
    _update_held(session, uid, worker, table,
                 lease_expires=now + dt.timedelta(seconds=lease_seconds))


def requeue(session: Session, uid: str, now: dt.datetime | None = None,
            region: str = "", *, table: Table = EXAMS) -> bool:
    """Puts an exam back for a new report (status ``requeue``, attempts reset, the last
    reason cleared); with ``region``, read as that region (an ignored exam a user sends
    to the model). Its reports are untouched: the new read becomes the next version.

    Returns False when the exam does not exist or is being processed right now.
    """
    values: dict[str, Any] = {"status": REQUEUE, "attempts": 0, "error": "",
                              "reason_code": "", "not_before": None,
                              "updated": now or utcnow()}
    if region:
        values["regions" if table is STUDIES else "region"] = region
    result = session.connection().execute(
        update(table).where(table.c.uid == uid, table.c.status != PROCESSING).values(values)
    )
    if result.rowcount:
        metrics.QUEUE_TRANSITIONS.labels("requeue").inc()
    return bool(result.rowcount)


def reclaim_expired(session: Session, *, max_attempts: int,
                    now: dt.datetime | None = None, table: Table = EXAMS) -> int:
    """Returns exams whose lease expired to the queue (or to ``error`` at max attempts).

    The lost lease counts as an attempt, so an exam that kills every worker that takes it
    ends in ``error`` instead of looping. Returns how many exams were reclaimed.
    """
    now = now or utcnow()
    expired = and_(PROCESSING_SQL, table.c.lease_expires < now)
    conn = session.connection()
    failed = conn.execute(
        update(table)
        .where(expired, table.c.attempts + 1 >= max_attempts)
        .values(
            status=ERROR, attempts=table.c.attempts + 1, lease_owner=None, lease_expires=None,
            error="lease expired: the worker stopped before finishing",
            reason_code="worker_lost", updated=now,
        )
    ).rowcount
    requeued = conn.execute(
        update(table)
        .where(expired)
        .values(
            status=QUEUED, attempts=table.c.attempts + 1, lease_owner=None, lease_expires=None,
            updated=now,
        )
    ).rowcount
    metrics.QUEUE_TRANSITIONS.labels("reclaim").inc(failed + requeued)
    return failed + requeued


def heartbeat(session: Session, worker: str, host: str, pid: int,
              now: dt.datetime | None = None) -> None:
    """Records that ``worker`` (process ``pid`` on ``host``) is alive."""
    now = now or utcnow()
    updated = session.connection().execute(
        update(WORKERS).where(WORKERS.c.id == worker)
        .values(heartbeat=now)).rowcount
    if not updated:
        session.add(Worker(id=worker, host=host, pid=pid, started=now, heartbeat=now))


def forget_worker(session: Session, worker: str) -> None:
    """Removes a worker that stops cleanly (after releasing what it held)."""
    session.execute(delete(Worker).where(Worker.id == worker))


def gone_workers(session: Session, *, stale_after: float, me: str = "", host: str = "",
                 pid: int = 0, alive: frozenset[int] | None = None,
                 now: dt.datetime | None = None) -> list[str]:
    """Workers whose heartbeat is older than ``stale_after`` seconds; and, asked by
    worker ``me`` (process ``pid`` on ``host``, where ``alive`` are the running process
    ids), at once whatever their heartbeat: this host's workers whose process is gone,
    and an earlier worker of this very process id (a restarted container's pid 1)."""
    now = now or utcnow()
    rows = session.execute(select(Worker.id, Worker.host, Worker.pid, Worker.heartbeat)).all()
    gone = []
    for r in rows:
        if r.id == me:
            continue
        here = bool(host) and r.host == host
        if (r.heartbeat < now - dt.timedelta(seconds=stale_after)
                or (here and alive is not None and r.pid not in alive)
                or (here and pid and r.pid == pid)):
            gone.append(r.id)
    return gone


def reclaim_gone(session: Session, workers: list[str], *, max_attempts: int,
                 now: dt.datetime | None = None, table: Table = EXAMS) -> int:
    """Returns the exams held by ``workers`` (gone) to the queue, or to ``error`` at
    ``max_attempts`` (the crash counts as an attempt), and forgets those workers.
    Returns how many exams."""
    if not workers:
        return 0
    now = now or utcnow()
    held = and_(PROCESSING_SQL, table.c.lease_owner.in_(workers))
    conn = session.connection()
    failed = conn.execute(
        update(table).where(held, table.c.attempts + 1 >= max_attempts)
        .values(status=ERROR, attempts=table.c.attempts + 1, lease_owner=None,
                lease_expires=None, updated=now,
                error="the worker reading it stopped (crash) before finishing",
                reason_code="worker_lost")).rowcount
    requeued = conn.execute(
        update(table).where(held)
        .values(status=QUEUED, attempts=table.c.attempts + 1, lease_owner=None,
                lease_expires=None, updated=now)).rowcount
    session.execute(delete(Worker).where(Worker.id.in_(workers)))
    metrics.QUEUE_TRANSITIONS.labels("reclaim").inc(failed + requeued)
    return failed + requeued
