"""Persisted key/value state (cursors, the first-start admin), query/retrieve records,
and the audit log."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.orm import Session

from xrayvision.db.models import (
    AuditLog,
    Exam,
    Retrieval,
    State,
    utcnow,
)


def audit(session: Session, action: str, *, username: str = "", target: str = "",
          remote: str = "", detail: str = "") -> None:
    session.add(
        AuditLog(username=username, action=action, target=target, remote=remote,
                 detail=detail[:4000], ts=utcnow())
    )


def get_state(session: Session, key: str) -> str | None:
    row = session.get(State, key)
    return row.value if row else None


def set_state(session: Session, key: str, value: str) -> None:
    row = session.get(State, key)
    if row is None:
        session.add(State(key=key, value=value, updated=utcnow()))
    else:
        row.value, row.updated = value, utcnow()


def states_with_prefix(session: Session, prefix: str) -> list[tuple[str, str]]:
    """The (key, value) state rows whose key starts with ``prefix``, by key."""
    rows = session.scalars(select(State).where(State.key.startswith(prefix, autoescape=True))
                           .order_by(State.key))
    return [(row.key, row.value) for row in rows]


def study_needs_retrieval(session: Session, study_uid: str) -> bool:
    """False when the study was fully retrieved before, or when its instances arrived
    some other way (pushed by the PACS) and no retrieval of it ever failed."""
    retrieval = session.get(Retrieval, study_uid)
    if retrieval is not None:
        return retrieval.status != "done"
    known = session.scalar(select(func.count()).select_from(Exam)
                           .where(Exam.study_uid == study_uid))
    return not known


def record_retrieval(session: Session, study_uid: str, *, done: bool, instances: int,
                     error: str = "") -> Retrieval:
    row = session.get(Retrieval, study_uid)
    if row is None:
        row = Retrieval(study_uid=study_uid, attempts=0)
        session.add(row)
    row.status = "done" if done else "failed"
    row.attempts = (row.attempts or 0) + 1
    row.instances = instances
    row.error = error[:2000]
    row.updated = utcnow()
    return row


def insert_state(session: Session, key: str, value: str) -> None:
    """Adds a state row; raises IntegrityError when the key exists (first writer wins)."""
    session.add(State(key=key, value=value, updated=utcnow()))
    session.flush()



def audit_page(session: Session, *, username: str = "", action: str = "",
               since: dt.datetime | None = None, until: dt.datetime | None = None,
               before_id: int | None = None, size: int = 100) -> list[AuditLog]:
    """Audit rows, newest first, ``size`` at most: of one user name, of actions starting
    with ``action`` (``login`` also finds ``login.failed``), in a time window, and older
    than row ``before_id`` (the next page: ids only grow)."""
    query = select(AuditLog)
    if username:
        query = query.where(AuditLog.username == username)
    if action:
        query = query.where(AuditLog.action.startswith(action, autoescape=True))
    if since is not None:
        query = query.where(AuditLog.ts >= since)
    if until is not None:
        query = query.where(AuditLog.ts < until)
    if before_id is not None:
        query = query.where(AuditLog.id < before_id)
    return list(session.scalars(query.order_by(AuditLog.id.desc()).limit(size)))
