"""Studies: the rollup of a study's images (``studies``), its read-per-study queue state
after each conversion, what a study read needs (:class:`StudyContext`) and its storage.

A study is keyed by its Study Instance UID; an instance without one is a study of its
own, keyed by its SOP Instance UID (:func:`study_key`). Its row is written when the
first of its images has been converted and refreshed after every later conversion
(:func:`refresh_study`, in the conversion's transaction), never on the C-STORE path.

Read per study (``[ai] read_per = study``), the row is also the read's queue entry
(``db/queue.py`` with ``table=STUDIES``): an image that becomes readable (converted, a
region matched) puts the study in ``queued`` with ``not_before`` = now + the quiet time
(none for urgent, asap and stat studies), so that a study is read once its images have
stopped arriving; each later image pushes ``not_before`` on. An image that becomes
readable while the study is read sets ``pending``: the read completes, and the study is
read again, all its images, as the next version (nothing is lost, the earlier read is
kept). A study with no readable image is ``ignore`` (every image ignored) or ``error``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, case, delete, or_, select, update
from sqlalchemy.orm import Session

from xrayvision.db import queue
from xrayvision.db.models import (
    DONE,
    ERROR,
    IGNORE,
    NONE,
    PROCESSING,
    QUEUED,
    REQUEUE,
    STAT,
    AIReport,
    Exam,
    RadReport,
    Study,
    utcnow,
)
from xrayvision.db.repo.exams import _dialect_insert, delete_exams
from xrayvision.db.repo.outbox import enqueue_results
from xrayvision.db.repo.reports import ReportContext, _archive_and_upsert, report_context
from xrayvision.db.repo.tallies import restate_tallies

URGENT = 1  # config.PRIORITIES["urgent"]: read at once, no quiet time
READABLE = (QUEUED, PROCESSING, DONE, REQUEUE)  # an image's statuses once a region matched


def study_key(study_uid: str, uid: str) -> str:
    """The key of the study an instance belongs to (pure)."""
    return study_uid or uid


@dataclass(frozen=True)
class ImageFacts:
    """What the rollup reads of one image (one ``exams`` row)."""

    uid: str
    cnp: str | None
    accession: str
    modality: str
    study_description: str
    region: str
    projection: str
    calling_aet: str
    series_datetime: dt.datetime | None
    priority: int
    status: str
    error: str
    reason_code: str
    created: dt.datetime


def _distinct(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def rollup(images: Sequence[ImageFacts]) -> dict[str, Any]:
    """The study's columns from its images, in order of receipt (pure; ``images`` not
    empty): the first non-empty patient, accession, modality, description and calling AE;
    the regions and views of the readable images (of all when none is); the earliest
    series time; the highest priority; counts; the status a study without a read in
    flight has (``unread_status``) with the reason of an ``ignore`` or ``error``."""
    ordered = sorted(images, key=lambda i: (i.created, i.uid))

    def first(attr: str) -> str:
        return next((getattr(i, attr) for i in ordered if getattr(i, attr)), "")

    readable = [i for i in ordered if i.status in READABLE]
    shown = readable or ordered
    times = [i.series_datetime for i in ordered if i.series_datetime is not None]
    if readable:
        status, code, reason = QUEUED, "", ""
    elif any(i.status == NONE for i in ordered):
        status, code, reason = NONE, "", ""
    elif all(i.status == IGNORE for i in ordered):
        status, code, reason = IGNORE, ordered[0].reason_code, ordered[0].error
    else:
        bad = next(i for i in ordered if i.status == ERROR)
        status, code, reason = ERROR, bad.reason_code, bad.error
    return {
        "cnp": first("cnp") or None, "accession": first("accession"),
        "modality": first("modality"), "description": first("study_description")[:256],
        "calling_aet": first("calling_aet"),
        "regions": ",".join(_distinct([i.region for i in shown]))[:256],
        "views": ",".join(_distinct([i.projection for i in shown]))[:256],
        "study_datetime": min(times) if times else None,
        "priority": max(i.priority for i in ordered), "images": len(ordered),
        "readable": len(readable), "created": ordered[0].created,
        "last_image": ordered[-1].created,
        "unread_status": status, "reason_code": code, "error": reason[:2000],
    }


def next_state(current: str | None, roll: dict[str, Any], *, became_readable: bool,
               read_per_study: bool, quiet: float, now: dt.datetime) -> dict[str, Any]:
    """The study's queue columns after an image's conversion ended (pure): ``current``
    is its status (None: a new study), ``became_readable`` whether that image can be read.
    Read per image, a study is only ``none``, ``ignore``, ``error`` or ``done`` (its
    images carry the reads)."""
    unread = roll["unread_status"]
    reason = {"reason_code": roll["reason_code"], "error": roll["error"]}
    if not read_per_study:
        return {"status": DONE if unread == QUEUED else unread,
                **(reason if unread != QUEUED else {"reason_code": "", "error": ""})}
    due = None if roll["priority"] >= URGENT else now + dt.timedelta(seconds=quiet)
    if became_readable:
        if current == PROCESSING:
            return {"pending": True, "not_before": due}
        if current in (QUEUED, REQUEUE):
            return {"not_before": due}
        return {"status": QUEUED, "not_before": due, "attempts": 0, "reason_code": "",
                "error": ""}
    if current in (None, NONE, IGNORE, ERROR) and unread != QUEUED:
        return {"status": unread, **reason}
    if current is None:  # a new study whose readable image was converted earlier
        return {"status": QUEUED, "not_before": due}
    return {}


_IMAGE_FACTS = [Exam.uid, Exam.cnp, Exam.accession, Exam.modality, Exam.study_description,
                Exam.region, Exam.projection, Exam.calling_aet, Exam.series_datetime,
                Exam.priority, Exam.status, Exam.error, Exam.reason_code, Exam.created]


def _of_study(study_uid: str, uid: str) -> Any:
    return Exam.study_uid == study_uid if study_uid else Exam.uid == uid


def refresh_study(session: Session, study_uid: str, uid: str, *, became_readable: bool,
                  read_per_study: bool, quiet: float, threshold: int,
                  now: dt.datetime | None = None) -> str:
    """Rolls the study of instance ``uid`` (Study Instance UID ``study_uid``) up from its
    images after that instance's conversion, and moves its read-queue state as the module
    docstring says; returns the study's key. One read of the images, one upsert."""
    now = now or utcnow()
    key = study_key(study_uid, uid)
    images = [ImageFacts(**row._asdict()) for row in session.execute(
        select(*_IMAGE_FACTS).where(_of_study(study_uid, uid)))]
    roll = rollup(images)
    columns = {k: v for k, v in roll.items()
               if k not in ("unread_status", "reason_code", "error")}
    for _ in range(2):  # a concurrent first conversion of this study may insert it first
        current = session.execute(
            select(Study.status, Study.severity, Study.reviewed).where(Study.uid == key)
            .with_for_update()).first()
        state = next_state(current[0] if current else None, roll,
                           became_readable=became_readable, read_per_study=read_per_study,
                           quiet=quiet, now=now)
        severity, reviewed = (current[1], current[2]) if current else (-1, False)
        triage = int(not reviewed and (severity >= threshold or roll["priority"] >= STAT))
        if current is not None:
            session.connection().execute(update(Study).where(Study.uid == key).values(
                **columns, **state, triage=triage, updated=now))
            break
        values = {"status": NONE, "attempts": 0, "severity": -1, **columns, **state,
                  "triage": triage, "updated": now}
        inserted = session.connection().execute(
            _dialect_insert(session)(Study).values(uid=key, **values)
            .on_conflict_do_nothing(index_elements=["uid"]))
        if inserted.rowcount:
            break
    return key


@dataclass(frozen=True)
class StudyImageRef:
    """An image a study read covers."""

    uid: str
    region: str
    projection: str


@dataclass(frozen=True)
class StudyContext:
    """What a study read needs: the study's key, its first readable image's context (the
    patient, accession and priority enrichment and notification use), the readable images
    in order (the first ``max_images`` are sent; the read covers all), its regions and the
    study's previous AI report."""

    uid: str
    lead: ReportContext
    images: tuple[StudyImageRef, ...]
    regions: str
    previous_report: str
    priority: int


def study_context(session: Session, key: str) -> StudyContext | None:
    """The read context of study ``key``; None when it is unknown or has no readable
    image (a requeue of a study whose images were all ignored: see :func:`requeue_study`)."""
    study = session.execute(select(Study.regions, Study.priority).where(Study.uid == key)) \
        .first()
    if study is None:
        return None
    rows = session.execute(
        select(Exam.uid, Exam.region, Exam.projection)
        .where(or_(Exam.study_uid == key, Exam.uid == key), Exam.status.in_(READABLE))
        .order_by(Exam.series_datetime, Exam.created, Exam.uid)).all()
    if not rows:
        return None
    lead = report_context(session, rows[0][0])
    if lead is None:
        return None
    previous = session.scalar(select(AIReport.text).where(AIReport.uid == key)) or ""
    return StudyContext(uid=key, lead=lead,
                        images=tuple(StudyImageRef(*row) for row in rows),
                        regions=study[0], previous_report=previous, priority=study[1])


def _study_read_statement() -> Any:
    severity = bindparam("p_severity", type_=Integer())
    threshold = bindparam("p_threshold", type_=Integer())
    return update(Study).where(Study.uid == bindparam("p_uid")).values(
        severity=severity, reviewed=False,
        triage=case((or_(severity >= threshold, Study.priority >= STAT), 1), else_=0))


_STUDY_READ = _study_read_statement()


def save_study_read(session: Session, key: str, images: Sequence[str], *, threshold: int,
                    results: Sequence[str] = (), **fields: Any) -> None:
    """Stores a new AI read of study ``key`` as its current report (the one it replaces
    is kept as a version, as ``save_ai_read`` does) and marks the ``images`` it covers
    ``done``, their read being this one (worklist order keys included); the read goes to
    the results outbox for each of ``results``."""
    severity = int(fields.get("severity", -1))
    _archive_and_upsert(session, key, fields)
    session.connection().execute(_STUDY_READ, {"p_uid": key, "p_severity": severity,
                                               "p_threshold": threshold})
    session.connection().execute(
        update(Exam).where(Exam.uid.in_(list(images)), Exam.status.in_(READABLE)).values(
            status=DONE, read_uid=key, severity=severity, reviewed=False,
            triage=1 if severity >= threshold else case((Exam.priority >= STAT, 1), else_=0),
            error="", reason_code="", updated=utcnow()))
    restate_tallies(session, [key])
    enqueue_results(session, key, results)


def get_study(session: Session, key: str) -> Study | None:
    """The study ``key``; None when unknown (none of its images converted yet)."""
    return session.get(Study, key)


def requeue_study(session: Session, key: str, region: str = "",
                  now: dt.datetime | None = None) -> bool:
    """Puts study ``key`` back for a new read (see ``queue.requeue``); with ``region``,
    its images that were ignored are read as that region. False when the study is
    unknown or being read right now."""
    if region:
        session.connection().execute(
            update(Exam).where(or_(Exam.study_uid == key, Exam.uid == key),
                               Exam.status == IGNORE)
            .values(status=QUEUED, region=region, error="", reason_code=""))
    return queue.requeue(session, key, now, region, table=queue.STUDIES)


def purge_error_exams(session: Session, older_than: dt.datetime, limit: int = 1000, *,
                      read_per_study: bool = True, threshold: int = 5) -> list[str]:
    """Deletes up to ``limit`` ``error`` exams last updated before ``older_than`` with
    their radiologist reports, except those with an AI read of their own (a read and its
    reviews are never deleted), and settles their studies: rolled up again from the
    images left (counts, regions, first receipt; the status of a study not read yet),
    or, when no image is left, deleted with the study's copy of a report unless the
    study has an AI read (then kept with no images). Returns the exams' UIDs so the
    caller removes the images too."""
    rows = session.execute(
        select(Exam.uid, Exam.study_uid)
        .where(Exam.status == ERROR, Exam.updated < older_than,
               ~select(AIReport.uid).where(AIReport.uid == Exam.uid).exists())
        .order_by(Exam.updated).limit(limit)).all()
    uids = [uid for uid, _ in rows]
    delete_exams(session, uids)
    studies = {study_key(study_uid, uid): study_uid for uid, study_uid in rows}
    for key, study_uid in sorted(studies.items()):
        left = session.scalar(select(Exam.uid).where(_of_study(study_uid, key)).limit(1))
        if left is not None:
            refresh_study(session, study_uid, left, became_readable=False,
                          read_per_study=read_per_study, quiet=0.0, threshold=threshold)
        elif session.get(AIReport, key) is None:
            session.execute(delete(RadReport).where(RadReport.uid == key))
            session.execute(delete(Study).where(Study.uid == key))
        else:  # kept for its read: no image left to show
            session.execute(update(Study).where(Study.uid == key).values(
                images=0, readable=0, updated=utcnow()))
    restate_tallies(session, studies)  # (a study's first receipt may have moved)
    return uids
