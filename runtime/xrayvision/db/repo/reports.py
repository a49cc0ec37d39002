"""The AI's and the radiologist's reports (upserts by exam UID), what a model read needs
of an exam (:class:`ReportContext`), the radiologist's review of an AI report, and what
the FHIR poller reads.

AI reads are versioned: :func:`save_ai_read` moves the current read (with its review) to
``ai_report_versions`` before storing the new one as the next version, and every review is
also appended to ``reviews``; nothing a model or a radiologist produced is overwritten."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from xrayvision.db.models import (
    DONE,
    STAT,
    AIReport,
    AIReportVersion,
    Base,
    Exam,
    FhirUnlinked,
    Patient,
    RadReport,
    RadReportVersion,
    Review,
    Study,
    utcnow,
)
from xrayvision.db.repo.outbox import enqueue_results
from xrayvision.db.repo.state import audit
from xrayvision.db.repo.tallies import restate_tallies

_AI_FIELDS = {c.key for c in AIReport.__table__.columns} - {"uid", "created", "updated"}


_RAD_FIELDS = {c.key for c in RadReport.__table__.columns} - {"uid", "created", "updated"}


@functools.lru_cache(maxsize=64)
def _upsert_statement(dialect: str, table_name: str, fields: tuple[str, ...],
                      new_version: bool = False) -> Insert:
    """INSERT ... ON CONFLICT (uid) DO UPDATE for one set of fields, built once: building
    a statement costs more CPU than running it on the relay's per-exam path. With
    ``new_version`` an existing row becomes the next version (its ``version`` + 1, created
    now)."""
    table = Base.metadata.tables[table_name]
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    columns = ("uid", "created", "updated", *fields)
    stmt = insert_(table).values({c: bindparam(c, type_=table.c[c].type) for c in columns})
    if fields:
        set_: dict[str, Any] = {**{f: stmt.excluded[f] for f in fields},
                                "updated": stmt.excluded.updated}
        if new_version:
            set_.update(version=table.c.version + 1, created=stmt.excluded.created)
        return stmt.on_conflict_do_update(index_elements=["uid"], set_=set_)
    return stmt.on_conflict_do_nothing(index_elements=["uid"])


def _upsert_report(session: Session, model: Any, allowed: set[str], uid: str,
                   fields: dict[str, Any], new_version: bool = False) -> None:
    """One INSERT ... ON CONFLICT DO UPDATE on the table (both backends): a single round
    trip and no ORM bookkeeping, since this sits on the relay's per-exam path."""
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown {model.__tablename__} fields: {', '.join(sorted(unknown))}")
    now = utcnow()
    names = tuple(sorted(fields))
    stmt = _upsert_statement(session.get_bind().dialect.name, model.__tablename__, names,
                             new_version)
    session.connection().execute(stmt, {"uid": uid, "created": now, "updated": now, **fields})


_VERSION_COLUMNS = ("uid", "version", "text", "positive", "severity", "confidence", "summary",
                    "model", "endpoint", "latency", "prompt_version", "review_correct",
                    "review_note", "reviewed_by", "reviewed_at", "created")


def _archive_statement() -> Insert:
    a = AIReport.__table__.c
    return insert(AIReportVersion).from_select(
        [*_VERSION_COLUMNS, "superseded"],
        select(*(a[c] for c in _VERSION_COLUMNS),
               bindparam("superseded", type_=AIReportVersion.__table__.c.superseded.type))
        .where(a.uid == bindparam("uid")))


# Built once (module import): it runs with every completed read.
_ARCHIVE = _archive_statement()
# A new read replaces all of these: what it does not give is not carried over.
_NEW_READ = {"text": "", "positive": -1, "severity": -1, "confidence": -1, "summary": "",
             "model": "", "endpoint": "", "latency": 0.0, "prompt_version": ""}
_UNREVIEWED = {"reviewed": False, "review_correct": -1, "review_note": "", "reviewed_by": "",
               "reviewed_at": None}


def critical(severity: Any, threshold: Any) -> ColumnElement[bool]:
    """An exam is critical when its AI severity is at or above ``threshold`` or its
    priority is ``stat`` (SQL; the worklist's triage is 1 while it is critical and its
    read not reviewed)."""
    return or_(severity >= threshold, Exam.priority >= STAT)


def _exam_read_statement() -> Any:
    """The exam's worklist keys after a new read: its severity, not reviewed, and triage."""
    severity = bindparam("p_severity", type_=Integer())
    return update(Exam).where(Exam.uid == bindparam("p_uid")).values(
        severity=severity, reviewed=False,
        triage=case((critical(severity, bindparam("p_threshold", type_=Integer())), 1),
                    else_=0))


# Built once (module import), as the archive: the relay's per-exam path.
_EXAM_READ = _exam_read_statement()


def _archive_and_upsert(session: Session, uid: str, fields: dict[str, Any]) -> None:
    """The current read of ``uid`` (an exam's or a study's) to ``ai_report_versions``,
    the new one in its place as the next version, not reviewed."""
    session.connection().execute(_ARCHIVE, {"uid": uid, "superseded": utcnow()})
    _upsert_report(session, AIReport, _AI_FIELDS, uid, {**_NEW_READ, **fields, **_UNREVIEWED},
                   new_version=True)


def save_ai_read(session: Session, uid: str, *, threshold: int,
                 results: Sequence[str] = (), **fields: Any) -> None:
    """Stores a new AI read of the exam as its current report: the read it replaces, if
    any, is kept in ``ai_report_versions`` with its review, and the new one is version
    n + 1 (1 for a first read), not reviewed yet. The exam's worklist order follows
    (severity, not reviewed, triage at ``threshold``), and the statistics' tallies; the
    read goes to the results outbox for each of ``results`` (destinations)."""
    _archive_and_upsert(session, uid, fields)
    session.connection().execute(_EXAM_READ, {
        "p_uid": uid, "p_severity": int(fields.get("severity", -1)), "p_threshold": threshold})
    restate_tallies(session, [uid])
    enqueue_results(session, uid, results)


def retriage(session: Session, threshold: int) -> int:
    """Recomputes every exam's triage for ``threshold`` (it is a setting: a changed one
    reorders the worklist); returns how many exams changed. Cheap when none did."""
    wanted = case((and_(Exam.reviewed.is_(False), critical(Exam.severity, threshold)), 1),
                  else_=0)
    result = session.connection().execute(
        update(Exam).where(Exam.triage != wanted).values(triage=wanted))
    study_wanted = case((and_(Study.reviewed.is_(False), or_(
        Study.severity >= threshold, Study.priority >= STAT)), 1), else_=0)
    studies = session.connection().execute(
        update(Study).where(Study.triage != study_wanted).values(triage=study_wanted))
    return int(result.rowcount or 0) + int(studies.rowcount or 0)


# What makes a radiologist report another one (the rest is our check of it).
_RAD_IDENTITY = ("fhir_id", "fhir_version", "text")
_RAD_KEPT = ("fhir_id", "fhir_version", "fhir_status", "text", "text_en", "radiologist",
             "positive", "severity", "summary", "checked")


def _keep(session: Session, report: RadReport, ended_by: str) -> None:
    """``report`` as it is now, into the history: ``ended_by`` "replaced", or the FHIR
    status that withdrew it."""
    session.add(RadReportVersion(uid=report.uid, created=report.updated, ended=utcnow(),
                                 ended_by=ended_by,
                                 **{f: getattr(report, f) for f in _RAD_KEPT}))


def _keep_if_replaced(session: Session, uid: str, fields: dict[str, Any]) -> None:
    """Keeps ``uid``'s report in the history when ``fields`` make it another report (a
    new FHIR version, another report, another text); a recheck of the same one is not."""
    if not set(_RAD_IDENTITY) & fields.keys():
        return
    current = session.get(RadReport, uid, populate_existing=True)
    if current is not None and any(
            f in fields and fields[f] != getattr(current, f) for f in _RAD_IDENTITY):
        _keep(session, current, "replaced")


def save_rad_report(session: Session, uid: str, *, stored: bool = True,
                    **fields: Any) -> None:
    """Creates or updates the radiologist report of exam (or study key) ``uid`` (columns
    of rad_reports), and the statistics' tallies. A report it replaces goes to the
    history (``rad_report_versions``); ``stored=False``: the caller knows none is stored
    (no look for one)."""
    if stored:
        _keep_if_replaced(session, uid, fields)
    _upsert_report(session, RadReport, _RAD_FIELDS, uid, fields)
    restate_tallies(session, [uid])


def withdraw_rad_reports(session: Session, fhir_id: str, status: str) -> list[str]:
    """The HIS withdrew DiagnosticReport ``fhir_id`` (``status`` entered-in-error or
    cancelled): every exam's and study's copy of it leaves the current reports (and
    agreement) for the history, audited. Returns the uids it was withdrawn from (none
    when not stored)."""
    rows = session.scalars(select(RadReport).where(RadReport.fhir_id == fhir_id)).all()
    uids = [row.uid for row in rows]
    for row in rows:
        _keep(session, row, status)
        session.delete(row)
    if uids:
        session.flush()
        restate_tallies(session, uids)
        audit(session, "rad_report.withdrawn", username="fhir", target=fhir_id,
              detail=f"{status}: withdrawn from {len(uids)} exams and studies")
    return uids


def rad_history(session: Session, uid: str) -> list[RadReportVersion]:
    """Earlier and withdrawn radiologist reports of exam (or study key) ``uid``, oldest
    first."""
    return list(session.scalars(select(RadReportVersion).where(RadReportVersion.uid == uid)
                                .order_by(RadReportVersion.ended, RadReportVersion.id)))


def link_rad_report(session: Session, uid: str, key: str) -> bool:
    """Stores exam ``uid``'s radiologist report also as its study's (``key``: a report
    covers a study; read per study, agreement compares it with the study's AI read), but
    never over another report of the study updated later. Returns whether it did."""
    if key == uid:
        return False
    row = session.get(RadReport, uid, populate_existing=True)
    if row is None:
        return False
    current = session.get(RadReport, key, populate_existing=True)
    if current is not None and current.fhir_id != row.fhir_id and current.updated > row.updated:
        return False
    copy = {f: getattr(row, f) for f in _RAD_FIELDS}
    if current is not None and any(copy[f] != getattr(current, f) for f in _RAD_IDENTITY):
        _keep(session, current, "replaced")
    _upsert_report(session, RadReport, _RAD_FIELDS, key, copy)
    restate_tallies(session, [key])
    return True


@dataclass(frozen=True)
class ReportContext:
    """What the AI pipeline needs of an exam, read in one Core query."""

    uid: str
    region: str
    projection: str
    created: dt.datetime
    series_datetime: dt.datetime | None
    cnp: str | None
    patient_name: str
    sex: str
    birth_date: dt.date | None
    previous_report: str
    accession: str = ""
    priority: int = 0


def _report_context_statement() -> Select[*tuple[Any, ...]]:
    e, p, a = Exam.__table__.c, Patient.__table__.c, AIReport.__table__.c
    return (
        select(e.uid, e.region, e.projection, e.created, e.series_datetime, e.cnp,
               p.name, p.sex, p.birth_date, a.text, e.accession, e.priority)
        .select_from(Exam.__table__.outerjoin(Patient.__table__, p.cnp == e.cnp)
                     .outerjoin(AIReport.__table__, a.uid == e.read_uid))
        .where(e.uid == bindparam("uid"))
    )


# Built once (module import): it runs for every exam the relay processes.
_REPORT_CONTEXT = _report_context_statement()


def report_context(session: Session, uid: str) -> ReportContext | None:
    """The exam, its patient and its previous AI report text; None for an unknown exam."""
    row = session.connection().execute(_REPORT_CONTEXT, {"uid": uid}).first()
    if row is None:
        return None
    return ReportContext(row[0], row[1], row[2], row[3], row[4], row[5], row[6] or "",
                         row[7] or "", row[8], row[9] or "", row[10] or "", row[11] or 0)


def unenriched_exams(session: Session, since: dt.datetime, limit: int = 50) -> list[str]:
    """Exams received at or after ``since`` whose patient (by id) the hospital system
    never filled in (no patient row, or neither sex nor birth date): the newest exam of
    each such patient, at most ``limit``. What enrichment skipped (HIS down) is retried."""
    e, p = Exam.__table__.c, Patient.__table__.c
    rows = session.connection().execute(
        select(e.uid, e.cnp)
        .select_from(Exam.__table__.outerjoin(Patient.__table__, p.cnp == e.cnp))
        .where(e.created >= since, e.cnp.is_not(None), e.cnp != "",
               or_(p.cnp.is_(None), and_(or_(p.sex.is_(None), p.sex == ""),
                                         p.birth_date.is_(None))))
        .order_by(e.created.desc()).limit(limit * 8))
    newest: dict[str, str] = {}
    for uid, cnp in rows:
        newest.setdefault(cnp, uid)
    return list(newest.values())[:limit]


def raise_priority(session: Session, uid: str, priority: int) -> bool:
    """Raises the exam's and its study's priority to ``priority`` (the order's, from the
    hospital system), never lowers it; a ``stat`` order makes them critical until their
    read is reviewed. False when the exam is unknown or both already had that priority
    or more."""
    def raise_in(model: type[Exam] | type[Study], key: Any) -> int:
        values: dict[str, Any] = {"priority": priority}
        if priority >= STAT:
            values["triage"] = case((model.reviewed.is_(False), 1), else_=0)
        result = session.connection().execute(
            update(model).where(model.uid == key, model.priority < priority).values(values))
        return int(result.rowcount or 0)

    raised = raise_in(Exam, uid)
    # ... and its study's (read per study, the order is the study's)
    study = select(case((Exam.study_uid == "", Exam.uid), else_=Exam.study_uid)) \
        .where(Exam.uid == uid).scalar_subquery()
    return bool(raised + raise_in(Study, study))


@dataclass(frozen=True)
class PollExam:
    """A done exam as the FHIR poller sees it, with its radiologist report's FHIR link."""

    uid: str
    cnp: str
    study_uid: str
    accession: str
    region: str
    when: dt.datetime  # series date/time, else receipt
    rad_fhir_id: str = ""  # "" when no radiologist report yet
    rad_version: str = ""
    rad_checked: bool = False
    has_report: bool = False


def poll_exams(session: Session, since: dt.datetime) -> list[PollExam]:
    """Done exams received at or after ``since`` that have a patient id, with the FHIR id,
    version and check state of their radiologist report (one Core query)."""
    e, r = Exam.__table__.c, RadReport.__table__.c
    rows = session.connection().execute(
        select(e.uid, e.cnp, e.study_uid, e.accession, e.region, e.series_datetime, e.created,
               r.fhir_id, r.fhir_version, r.checked, r.uid)
        .select_from(Exam.__table__.outerjoin(RadReport.__table__, r.uid == e.uid))
        .where(e.status == DONE, e.created >= since, e.cnp.is_not(None), e.cnp != "")
        .order_by(e.cnp, e.created)
    )
    return [PollExam(uid=row[0], cnp=row[1], study_uid=row[2], accession=row[3],
                     region=row[4], when=row[5] or row[6], rad_fhir_id=row[7] or "",
                     rad_version=row[8] or "", rad_checked=bool(row[9]),
                     has_report=row[10] is not None)
            for row in rows]


def unchecked_rad_reports(session: Session, uids: Sequence[str]) -> dict[str, str]:
    """uid -> text of those radiologist reports among ``uids`` still waiting for CHK/TRN."""
    if not uids:
        return {}
    rows = session.execute(select(RadReport.uid, RadReport.text)
                           .where(RadReport.uid.in_(list(uids)), RadReport.checked.is_(False)))
    return {uid: text for uid, text in rows}


def read_of(session: Session, uid: str) -> str:
    """The key of the read that covers ``uid``: an exam's ``read_uid`` (its own UID, or
    its study's key once read per study); any other ``uid`` (a study's key) itself."""
    return session.scalar(select(Exam.read_uid).where(Exam.uid == uid)) or uid


def review_ai_report(session: Session, uid: str, *, correct: bool, note: str,
                     username: str, results: Sequence[str] = ()) -> int | None:
    """Records a radiologist's verdict on the current AI read covering ``uid`` (an exam,
    or a study's key; read per study the verdict is the study's): on the report, appended
    to ``reviews``, and the worklist order of every image and study it covers; the read
    with this review goes to the results outbox for each of ``results``. Returns the
    version reviewed, None when there is no AI read."""
    now = utcnow()
    key = read_of(session, uid)
    version = session.connection().scalar(
        update(AIReport).where(AIReport.uid == key).values(
            reviewed=True, review_correct=1 if correct else 0, review_note=note[:4000],
            reviewed_by=username[:128], reviewed_at=now, updated=now)
        .returning(AIReport.version))
    if version is None:
        return None
    # (the covered images by indexed columns: their own UID or their study's)
    session.connection().execute(update(Exam).where(
        or_(Exam.uid == key, Exam.study_uid == key), Exam.read_uid == key).values(
        reviewed=True, triage=0))
    session.connection().execute(update(Study).where(Study.uid == key).values(
        reviewed=True, triage=0))
    review = session.connection().scalar(insert(Review).returning(Review.id), {
        "uid": key, "version": version, "correct": correct, "note": note[:4000],
        "username": username[:128], "at": now})
    restate_tallies(session, [key])
    enqueue_results(session, key, results, version=int(version), review=int(review or 0))
    return int(version)


@dataclass(frozen=True)
class AIHistory:
    """An exam's earlier AI reads (oldest first) and every review (oldest first)."""

    versions: list[AIReportVersion]
    reviews: list[Review]


def ai_history(session: Session, uid: str) -> AIHistory:
    """The history of the read covering ``uid`` (as :func:`review_ai_report`)."""
    uid = read_of(session, uid)
    versions = session.scalars(select(AIReportVersion).where(AIReportVersion.uid == uid)
                               .order_by(AIReportVersion.version)).all()
    reviews = session.scalars(select(Review).where(Review.uid == uid)
                              .order_by(Review.at, Review.id)).all()
    return AIHistory(list(versions), list(reviews))



@dataclass(frozen=True)
class Unlinked:
    """A report the poller could not link, as it records it."""

    fhir_id: str
    cnp: str
    accessions: tuple[str, ...]
    rule: str  # none, ambiguous
    reason: str
    effective: dt.datetime | None


def note_unlinked(session: Session, reports: Sequence[Unlinked]) -> None:
    """Records (or refreshes) reports the poller could not link."""
    now = utcnow()
    for r in reports:
        row = session.get(FhirUnlinked, r.fhir_id)
        if row is None:
            row = FhirUnlinked(fhir_id=r.fhir_id, first_seen=now)
            session.add(row)
        row.cnp, row.accessions = r.cnp, ",".join(sorted(r.accessions))[:256]
        row.rule, row.reason, row.effective, row.last_seen = r.rule, r.reason, r.effective, now


def clear_unlinked(session: Session, fhir_ids: Sequence[str]) -> None:
    """Reports now linked leave the list."""
    if fhir_ids:
        session.execute(delete(FhirUnlinked).where(FhirUnlinked.fhir_id.in_(list(fhir_ids))))


def unlinked_ids(session: Session) -> set[str]:
    """The FHIR ids of the reports listed as not linked."""
    return set(session.scalars(select(FhirUnlinked.fhir_id)))


def unlinked_reports(session: Session, limit: int = 200) -> list[FhirUnlinked]:
    """The reports not linked, last seen first."""
    return list(session.scalars(select(FhirUnlinked)
                                .order_by(FhirUnlinked.last_seen.desc(), FhirUnlinked.fhir_id)
                                .limit(limit)))
