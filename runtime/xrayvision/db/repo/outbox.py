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
    counted; rows a newer one replaces become ``superseded`` and are not returned. A few
    statements whatever ``limit``: it runs in the relay process."""
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
    newer = o.__table__.alias("newer")
    replaced = list(session.scalars(
        select(o.id).where(o.id.in_(ids)).where(
            select(newer.c.id).where(newer.c.uid == o.uid,
                                     newer.c.destination == o.destination,
                                     newer.c.id > o.id).exists())))
    conn = session.connection()
    if replaced:
        conn.execute(update(o).where(o.id.in_(replaced)).values(
            status=SUPERSEDED, error="a newer result of the read replaced it"))
    wanted = [i for i in ids if i not in set(replaced)]
    if not wanted:
        return []
    claimed = session.scalars(
        update(o).where(o.id.in_(wanted)).values(
            attempts=o.attempts + 1, lease_owner=worker,
            lease_expires=now + dt.timedelta(seconds=lease_seconds))
        .returning(o), execution_options={"populate_existing": True})
    return sorted(claimed, key=lambda row: row.id)


def _held(session: Session, row_id: int, worker: str, values: dict[str, Any]) -> bool:
    o = ResultOutbox
    result = session.connection().execute(
        update(o).where(o.id == row_id, o.lease_owner == worker, o.status == PENDING)
        .values(values))
    return bool(result.rowcount)


def result_sent(session: Session, row_id: int, worker: str) -> bool:
    """Marks a held result sent; False when ``worker`` no longer holds it."""
    return bool(results_sent(session, [row_id], worker))


def results_sent(session: Session, row_ids: Sequence[int], worker: str) -> list[int]:
    """Marks the held results sent (one statement); returns those ``worker`` still held."""
    if not row_ids:
        return []
    o = ResultOutbox
    return list(session.scalars(
        update(o).where(o.id.in_(list(row_ids)), o.lease_owner == worker,
                        o.status == PENDING)
        .values(status=SENT, sent=utcnow(), error="", lease_owner=None, lease_expires=None)
        .returning(o.id)))


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
    return read_documents(session, [(key, version, review)])[0]


def read_documents(session: Session, wanted: Sequence[tuple[str, int, int]]
                   ) -> list[ReadDocument | None]:
    """:func:`read_document` for each (key, version, review), in order: one query per
    table for all of them (the sender reads a batch at a time, in the relay process)."""
    keyset = {k for k, _, _ in wanted}
    keys = sorted(keyset)
    if not keys:
        return []
    current = {r.uid: r for r in session.scalars(select(AIReport).where(AIReport.uid.in_(keys)))}
    older = [(k, v) for k, v, _ in wanted if k not in current or current[k].version != v]
    earlier: dict[tuple[str, int], Any] = {}
    if older:
        earlier = {(r.uid, r.version): r for r in session.scalars(
            select(AIReportVersion).where(or_(*(and_(AIReportVersion.uid == k,
                                                     AIReportVersion.version == v)
                                                for k, v in older))))}
    e = Exam
    images: dict[str, list[Any]] = {}
    for row in session.execute(
            select(e.sop_class, e.uid, e.series_uid, e.modality, e.study_uid, e.accession,
                   e.cnp, e.study_description, e.series_datetime, e.patient_name,
                   e.read_uid)
            .where(or_(e.uid.in_(keys), and_(e.study_uid.in_(keys),
                                             e.read_uid == e.study_uid)))
            .order_by(e.series_datetime, e.created, e.uid)):
        if row.uid in keyset:  # an image read on its own
            images.setdefault(row.uid, []).append(row)
        if row.study_uid in keyset and row.read_uid == row.study_uid != row.uid:
            images.setdefault(row.study_uid, []).append(row)
    studies = {s.uid: s for s in session.scalars(select(Study).where(Study.uid.in_(keys)))}
    cnps = sorted({rows[0].cnp for rows in images.values() if rows[0].cnp})
    patients = {p.cnp: p for p in session.scalars(
        select(Patient).where(Patient.cnp.in_(cnps)))} if cnps else {}
    review_ids = sorted({r for _, _, r in wanted if r})
    reviews = {r.id: r for r in session.scalars(
        select(Review).where(Review.id.in_(review_ids)))} if review_ids else {}
    out: list[ReadDocument | None] = []
    for key, version, review in wanted:
        read = current.get(key)
        if read is None or read.version != version:
            read = earlier.get((key, version))
        covered = images.get(key)
        if read is None or not covered:
            out.append(None)
            continue
        first = covered[0]
        study = studies.get(key)
        patient = patients.get(first.cnp) if first.cnp else None
        verdict = reviews.get(review) if review else None
        out.append(ReadDocument(
            key=key, version=version, text=read.text, positive=read.positive,
            severity=read.severity, confidence=read.confidence, summary=read.summary,
            model=read.model, endpoint=read.endpoint,
            prompt_version=read.prompt_version or "", read_at=read.created,
            study_uid=first.study_uid or key, accession=first.accession or "",
            study_datetime=(study.study_datetime if study is not None else None)
            or first.series_datetime,
            study_description=first.study_description or "",
            patient_id=first.cnp or "",
            patient_name=first.patient_name or (patient.name if patient else ""),
            birth_date=patient.birth_date if patient else None,
            sex=patient.sex if patient else "",
            images=tuple(ImageRef(i.sop_class, i.uid, i.series_uid, i.modality)
                         for i in covered),
            review_correct=None if verdict is None else bool(verdict.correct),
            review_note=verdict.note if verdict else "",
            reviewed_by=verdict.username if verdict else "",
            reviewed_at=verdict.at if verdict else None, review=review))
    return out


def sent_before(session: Session, rows: Sequence[ResultOutbox]
                ) -> dict[int, list[ResultOutbox]]:
    """For each of ``rows``, the results of the same read and destination sent before it
    (what a new SR version supersedes), oldest first; one query."""
    if not rows:
        return {}
    o = ResultOutbox
    sent = list(session.scalars(select(o).where(
        o.uid.in_(sorted({r.uid for r in rows})), o.status == SENT).order_by(o.id)))
    return {r.id: [s for s in sent if s.uid == r.uid and s.destination == r.destination
                   and s.id < r.id] for r in rows}
