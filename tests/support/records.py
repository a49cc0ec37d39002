"""Test-only repository helpers: rows put in place and read back directly, without the
paths (ingest, relay, poller) the runtime writes them through."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from xrayvision.db.engine import rowcount
from xrayvision.db.models import STATUSES, AIReport, Exam, RadReport, utcnow
from xrayvision.db.repo import (
    ExamInfo,
    PatientInfo,
    finish_conversion,
    insert_received,
    refresh_study,
)
from xrayvision.db.repo.tallies import restate_tallies


def add_exam(session: Session, info: ExamInfo,
             patient: PatientInfo | None = None) -> tuple[Exam, bool]:
    """``insert_received``, returning (exam, created) with the exam as an ORM object."""
    created = insert_received(session, info, patient)
    exam = session.get(Exam, info.uid, populate_existing=True)
    assert exam is not None
    return exam, created


def set_status(session: Session, uid: str, status: str, error: str = "") -> bool:
    """Sets an exam's status (and error text); returns False when the exam is unknown."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    result = session.execute(
        update(Exam).where(Exam.uid == uid).values(status=status, error=error, updated=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return bool(rowcount(result))


def save_ai_report(session: Session, uid: str, **fields: object) -> AIReport:
    """An AI report put in place (or changed) as given, without what a read does (no
    version kept, no worklist keys): the relay writes through ``repo.save_ai_read``."""
    unknown = set(fields) - {c.key for c in AIReport.__table__.columns}
    if unknown:
        raise ValueError(f"unknown ai_reports fields: {', '.join(sorted(unknown))}")
    report = session.get(AIReport, uid) or AIReport(uid=uid)
    for name, value in fields.items():
        setattr(report, name, value)
    session.add(report)
    session.flush()
    restate_tallies(session, [uid])  # as every write of a report does
    return report


def get_ai_report(session: Session, uid: str) -> AIReport | None:
    return session.get(AIReport, uid)


def get_rad_report(session: Session, uid: str) -> RadReport | None:
    return session.get(RadReport, uid)


def count_exams(session: Session, uids: Iterable[str] | None = None) -> int:
    query = select(func.count()).select_from(Exam)
    if uids is not None:
        query = query.where(Exam.uid.in_(list(uids)))
    return session.scalar(query) or 0


def add_converted(session: Session, info: ExamInfo, patient: PatientInfo | None = None, *,
                  per_study: bool = True, quiet: float = 0.0, threshold: int = 5) -> Exam:
    """An instance recorded and converted as ingest does it: the row (status ``none``),
    then its conversion's end in ``info.status`` (queued, ignore or error) with its
    study's refresh (read per study: queued after ``quiet`` seconds)."""
    status = info.status if info.status != "none" else "queued"
    exam, _ = add_exam(session, dataclasses.replace(info, status="none"), patient)
    ignored = status == "ignore"
    finish_conversion(session, info.uid, status, "no region rule matched" if ignored else "",
                      "no_region_rule" if ignored else "")
    refresh_study(session, info.study_uid, info.uid, became_readable=status == "queued",
                  read_per_study=per_study, quiet=quiet, threshold=threshold)
    return exam
