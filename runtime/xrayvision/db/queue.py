"""The exam queue: the ``exams`` table with leases.

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
- After ``max_attempts`` failures an exam goes to ``error`` with the last reason.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from xrayvision import metrics
from xrayvision.db.models import (
    CLAIMABLE,
    DONE,
    ERROR,
    PROCESSING,
    QUEUED,
    REQUEUE,
    Exam,
    utcnow,
)

MAX_RETRY_DELAY = 3600.0


class LeaseLost(Exception):
    """The exam is no longer held by this worker (lease expired and was reclaimed)."""


def claim(session: Session, worker: str, lease_seconds: float,
          now: dt.datetime | None = None) -> Exam | None:
    """Leases the next exam to ``worker``; returns it (status ``processing``) or None."""
    now = now or utcnow()
    candidate = (
        select(Exam.uid)
        .where(Exam.status.in_(CLAIMABLE), or_(Exam.not_before.is_(None), Exam.not_before <= now))
        .order_by(Exam.priority.desc(), Exam.created)
        .limit(1)
    )
    if session.bind.dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(Exam)
        .where(Exam.uid == candidate.scalar_subquery())
        .values(
            status=PROCESSING,
            lease_owner=worker,
            lease_expires=now + dt.timedelta(seconds=lease_seconds),
            updated=now,
        )
        .returning(Exam)
    )
    exam = session.scalars(stmt, execution_options={"synchronize_session": False}).first()
    if exam is not None:
        metrics.QUEUE_TRANSITIONS.labels("claim").inc()
    return exam


def _held(uid: str, worker: str):
    return and_(Exam.uid == uid, Exam.status == PROCESSING, Exam.lease_owner == worker)


def _update_held(session: Session, uid: str, worker: str, **values) -> None:
    result = session.execute(
        update(Exam).where(_held(uid, worker)).values(**values),
        execution_options={"synchronize_session": False},
    )
    if result.rowcount != 1:
        raise LeaseLost(f"exam {uid} is not held by {worker}")


def complete(session: Session, uid: str, worker: str, now: dt.datetime | None = None) -> None:
    """Marks a held exam ``done``; raises LeaseLost when ``worker`` no longer holds it."""
    _update_held(
        session, uid, worker,
        status=DONE, lease_owner=None, lease_expires=None, not_before=None, error="",
        updated=now or utcnow(),
    )
    metrics.QUEUE_TRANSITIONS.labels("complete").inc()


def retry_delay(base: float, attempts: int) -> float:
    """Exponential back-off after ``attempts`` failures: base, 2·base, 4·base … (capped)."""
    return min(base * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY)


def fail(session: Session, uid: str, worker: str, reason: str, *, max_attempts: int,
         base_delay: float, now: dt.datetime | None = None) -> str:
    """Counts a failed attempt; returns the new status.

    Below ``max_attempts`` the exam goes back to ``queued``, deferred by the back-off;
    at ``max_attempts`` it goes to ``error`` with ``reason``. Raises LeaseLost when
    ``worker`` no longer holds the exam.
    """
    now = now or utcnow()
    attempts = session.scalar(
        select(Exam.attempts).where(_held(uid, worker)).with_for_update()
    )
    if attempts is None:
        raise LeaseLost(f"exam {uid} is not held by {worker}")
    attempts += 1
    final = attempts >= max_attempts
    _update_held(
        session, uid, worker,
        status=ERROR if final else QUEUED,
        attempts=attempts,
        error=reason[:2000],
        lease_owner=None,
        lease_expires=None,
        not_before=None if final else now + dt.timedelta(seconds=retry_delay(base_delay, attempts)),
        updated=now,
    )
    metrics.QUEUE_TRANSITIONS.labels("error" if final else "fail").inc()
    return ERROR if final else QUEUED


def release(session: Session, uid: str, worker: str, now: dt.datetime | None = None) -> None:
    """Gives a held exam back to the queue without counting an attempt (shutdown, both
    model endpoints down). Raises LeaseLost when ``worker`` no longer holds it."""
    _update_held(
        session, uid, worker,
        status=QUEUED, lease_owner=None, lease_expires=None, updated=now or utcnow(),
    )
    metrics.QUEUE_TRANSITIONS.labels("release").inc()


def release_worker(session: Session, worker: str, now: dt.datetime | None = None) -> int:
    """Releases every exam ``worker`` holds; returns how many (used at shutdown)."""
    result = session.execute(
        update(Exam)
        .where(Exam.status == PROCESSING, Exam.lease_owner == worker)
        .values(status=QUEUED, lease_owner=None, lease_expires=None, updated=now or utcnow()),
        execution_options={"synchronize_session": False},
    )
    metrics.QUEUE_TRANSITIONS.labels("release").inc(result.rowcount)
    return result.rowcount


def renew(session: Session, uid: str, worker: str, lease_seconds: float,
          now: dt.datetime | None = None) -> None:
    """Extends the lease during a long call; raises LeaseLost when it was already lost."""
    now = now or utcnow()
    _update_held(session, uid, worker, lease_expires=now + dt.timedelta(seconds=lease_seconds))


def requeue(session: Session, uid: str, now: dt.datetime | None = None) -> bool:
    """Puts an exam back for a new report (status ``requeue``, attempts reset).

    Returns False when the exam does not exist or is being processed right now.
    """
    result = session.execute(
        update(Exam)
        .where(Exam.uid == uid, Exam.status != PROCESSING)
        .values(status=REQUEUE, attempts=0, error="", not_before=None, updated=now or utcnow()),
        execution_options={"synchronize_session": False},
    )
    if result.rowcount:
        metrics.QUEUE_TRANSITIONS.labels("requeue").inc()
    return bool(result.rowcount)


def reclaim_expired(session: Session, *, max_attempts: int,
                    now: dt.datetime | None = None) -> int:
    """Returns exams whose lease expired to the queue (or to ``error`` at max attempts).

    The lost lease counts as an attempt, so an exam that kills every worker that takes it
    ends in ``error`` instead of looping. Returns how many exams were reclaimed.
    """
    now = now or utcnow()
    expired = and_(Exam.status == PROCESSING, Exam.lease_expires < now)
    opts = {"synchronize_session": False}
    failed = session.execute(
        update(Exam)
        .where(expired, Exam.attempts + 1 >= max_attempts)
        .values(
            status=ERROR, attempts=Exam.attempts + 1, lease_owner=None, lease_expires=None,
            error="lease expired: the worker stopped before finishing", updated=now,
        ),
        execution_options=opts,
    ).rowcount
    requeued = session.execute(
        update(Exam)
        .where(expired)
        .values(
            status=QUEUED, attempts=Exam.attempts + 1, lease_owner=None, lease_expires=None,
            updated=now,
        ),
        execution_options=opts,
    ).rowcount
    metrics.QUEUE_TRANSITIONS.labels("reclaim").inc(failed + requeued)
    return failed + requeued
