"""The results outbox (``result_outbox``): AI reads to send to the PACS (DICOM SR) and the
HIS (FHIR), and what the sender needs to build them.

Contract:

- :func:`enqueue_results` runs in the transaction that stores a read or a review, so a
  result exists exactly when what it reports was stored (a SIGKILL loses neither).
- :func:`claim_results` leases up to ``limit`` due rows to ``worker`` and counts the
  attempt then: a sender killed mid-send leaves a row whose lease runs out and which is
  claimed again (sent at least once; the receivers' identity rules make it exactly once:
  the SR's SOP Instance UID and the FHIR identifiers are the same on every try). A row
  with a newer one for the same read and destination is ``superseded`` instead.
- :func:`result_sent` and :func:`result_failed` act only on a row ``worker`` holds; a
  failure waits ``retry_delay`` doubled per attempt (at most an hour), and is ``dead``
  after ``max_attempts`` or at once when ``permanent`` (the receiver refused it).
- :func:`resend_result` puts a dead row back (an admin's action, audited by the caller).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from xrayvision.db.models import (
    DEAD,
    PENDING,
    SENT,
    SUPERSEDED,
    AIReport,
    AIReportVersion,
    Exam,
    Patient,
    ResultOutbox,
    Review,
    Study,
    utcnow,
)

MAX_DELAY = 3600.0


def enqueue_results(session: Session, uid: str, destinations: Sequence[str], *,
                    version: int | None = None, review: int = 0) -> None:
    """Adds read ``uid`` (its current version unless ``version``; ``review``: the id of a
    review of it) for each of ``destinations``; nothing when there are none."""
    if not destinations:
        return
    if version is None:
        version = session.scalar(select(AIReport.version).where(AIReport.uid == uid))
        if version is None:
            return
    now = utcnow()
    session.execute(insert(ResultOutbox), [
        {"destination": d, "uid": uid, "version": version, "review": review,
         "status": PENDING, "attempts": 0, "error": "", "not_before": now, "created": now}
        for d in destinations])


def claim_results(session: Session, worker: str, *, limit: int, lease_seconds: float,
                  now: dt.datetime | None = None) -> list[ResultOutbox]:
    """Leases up to ``limit`` due results (oldest first) to ``worker``, each attempt
    counted; rows a newer one replaces become ``superseded`` and are not returned."""
    now = now or utcnow()
    o = ResultOutbox
    due = (select(o.id).where(o.status == PENDING, o.not_before <= now,
                              or_(o.lease_expires.is_(None), o.lease_expires < now))
           .order_by(o.not_before, o.id).limit(limit))
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list(session.scalars(due))
    if not ids:
        return []
    rows = list(session.scalars(select(o).where(o.id.in_(ids)).order_by(o.id)))
    newer = o.__table__.alias("newer")
    replaced = set(session.scalars(
        select(o.id).where(o.id.in_(ids)).where(
            select(newer.c.id).where(newer.c.uid == o.uid,
                                     newer.c.destination == o.destination,
                                     newer.c.id > o.id).exists())))
    claimed = []
    for row in rows:
        if row.id in replaced:
            row.status, row.error = SUPERSEDED, "a newer result of the read replaced it"
            continue
        row.attempts += 1
        row.lease_owner = worker
        row.lease_expires = now + dt.timedelta(seconds=lease_seconds)
        claimed.append(row)
    session.flush()
    return claimed


def _held(session: Session, row_id: int, worker: str, values: dict[str, Any]) -> bool:
    o = ResultOutbox
    result = session.connection().execute(
        update(o).where(o.id == row_id, o.lease_owner == worker, o.status == PENDING)
        .values(values))
    return bool(result.rowcount)


def result_sent(session: Session, row_id: int, worker: str) -> bool:
    """Marks a held result sent; False when ``worker`` no longer holds it."""
    return _held(session, row_id, worker, {
        "status": SENT, "sent": utcnow(), "error": "", "lease_owner": None,
        "lease_expires": None})


def retry_delay(base: float, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` tries: doubled each time, capped."""
    return float(min(MAX_DELAY, base * 2 ** max(0, attempts - 1)))


def result_failed(session: Session, row_id: int, worker: str, reason: str, *,
                  attempts: int, max_attempts: int, base_delay: float,
                  permanent: bool = False) -> str | None:
    """Records a failed send of a held result: ``pending`` again after the back-off, or
    ``dead`` (after ``max_attempts`` tries, or ``permanent``). Returns the new status,
    None when ``worker`` no longer holds it."""
    dead = permanent or attempts >= max_attempts
    status = DEAD if dead else PENDING
    values: dict[str, Any] = {
        "error": reason[:4000], "lease_owner": None, "lease_expires": None,
        "not_before": utcnow() + dt.timedelta(seconds=retry_delay(base_delay, attempts))}
    if dead:
        values["status"] = DEAD
    return status if _held(session, row_id, worker, values) else None


def resend_result(session: Session, row_id: int) -> bool:
    """A dead result back to ``pending`` with its attempts reset; False unless dead."""
    o = ResultOutbox
    result = session.connection().execute(
        update(o).where(o.id == row_id, o.status == DEAD).values(
            status=PENDING, attempts=0, not_before=utcnow(), lease_owner=None,
            lease_expires=None))
    return bool(result.rowcount)


@dataclass(frozen=True)
class OutboxDepth:
    """One destination's outbox: results waiting, dead, and the oldest one waiting."""

    destination: str
    pending: int
    dead: int
    oldest_pending: dt.datetime | None


def outbox_depths(session: Session, destinations: Sequence[str]) -> list[OutboxDepth]:
    """For each of ``destinations`` (zeros for one without rows)."""
    o = ResultOutbox
    rows = session.execute(
        select(o.destination, o.status, func.count(), func.min(o.created))
        .where(o.status.in_((PENDING, DEAD))).group_by(o.destination, o.status)).all()
    by: dict[tuple[str, str], tuple[int, Any]] = {(d, s): (n, t) for d, s, n, t in rows}
    out = []
    for d in destinations:
        pending, oldest = by.get((d, PENDING), (0, None))
        out.append(OutboxDepth(d, pending, by.get((d, DEAD), (0, None))[0], oldest))
    return out


def outbox_rows(session: Session, *, status: str = "", destination: str = "",
                limit: int = 100) -> list[ResultOutbox]:
    """The newest results (``status``/``destination`` filters when given)."""
    o = ResultOutbox
    query = select(o).order_by(o.id.desc()).limit(limit)
    if status:
        query = query.where(o.status == status)
    if destination:
        query = query.where(o.destination == destination)
    return list(session.scalars(query))


@dataclass(frozen=True)
class ImageRef:
    """One image an AI read covers, as the SR references it."""

    sop_class: str
    uid: str
    series_uid: str
    modality: str


@dataclass(frozen=True)
class ReadDocument:
    """Everything a result says, read once: the AI read (one version of it), the review
    it carries (or none), the study and patient it is about, and the images it read."""

    key: str  # the read's uid (a study's key or an exam's SOP Instance UID)
    version: int
    text: str
    positive: int
    severity: int
    confidence: int
    summary: str
    model: str
    endpoint: str
    prompt_version: str
    read_at: dt.datetime
    study_uid: str
    accession: str
    study_datetime: dt.datetime | None
    study_description: str
    patient_id: str
    patient_name: str
    birth_date: dt.date | None
    sex: str
    images: tuple[ImageRef, ...]
    review_correct: bool | None = None
    review_note: str = ""
    reviewed_by: str = ""
    reviewed_at: dt.datetime | None = None
    review: int = 0  # reviews.id, 0: none


def read_document(session: Session, key: str, version: int, review: int = 0
                  ) -> ReadDocument | None:
    """Version ``version`` of read ``key`` with review ``review``; None when that read
    (or the images it covers) is no longer there."""
    read: Any = session.scalar(select(AIReport).where(AIReport.uid == key,
                                                      AIReport.version == version))
    if read is None:
        read = session.get(AIReportVersion, (key, version))
    if read is None:
        return None
    images = session.execute(
        select(Exam.sop_class, Exam.uid, Exam.series_uid, Exam.modality, Exam.study_uid,
               Exam.accession, Exam.cnp, Exam.study_description, Exam.series_datetime,
               Exam.patient_name)
        .where(or_(Exam.uid == key, and_(Exam.study_uid == key, Exam.read_uid == key)))
        .order_by(Exam.series_datetime, Exam.created, Exam.uid)).all()
    if not images:
        return None
    first = images[0]
    study = session.get(Study, key)
    patient = session.get(Patient, first.cnp) if first.cnp else None
    verdict = None
    if review:
        verdict = session.get(Review, review)
    return ReadDocument(
        key=key, version=version, text=read.text, positive=read.positive,
        severity=read.severity, confidence=read.confidence, summary=read.summary,
        model=read.model, endpoint=read.endpoint, prompt_version=read.prompt_version or "",
        read_at=read.created, study_uid=first.study_uid or key,
        accession=first.accession or "",
        study_datetime=(study.study_datetime if study is not None else None)
        or first.series_datetime,
        study_description=first.study_description or "",
        patient_id=first.cnp or "",
        patient_name=first.patient_name or (patient.name if patient else ""),
        birth_date=patient.birth_date if patient else None,
        sex=patient.sex if patient else "",
        images=tuple(ImageRef(i.sop_class, i.uid, i.series_uid, i.modality) for i in images),
        review_correct=None if verdict is None else bool(verdict.correct),
        review_note=verdict.note if verdict else "",
        reviewed_by=verdict.username if verdict else "",
        reviewed_at=verdict.at if verdict else None, review=review)


def sent_before(session: Session, key: str, destination: str, before_id: int
                ) -> list[ResultOutbox]:
    """The results of read ``key`` sent to ``destination`` before row ``before_id``
    (what a new SR version supersedes), oldest first."""
    o = ResultOutbox
    return list(session.scalars(select(o).where(
        o.uid == key, o.destination == destination, o.status == SENT, o.id < before_id)
        .order_by(o.id)))
