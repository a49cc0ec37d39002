"""Repository functions, each ``fn(session, ...)``.

They never commit: ``Database.read``/``Database.write`` wrap each call in a transaction.
Returned ORM objects are detached-safe (the sessions do not expire on commit, and the
models have no lazy relationships).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    SQLColumnExpression,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from xrayvision.agreement import CLASSES as AGREEMENT_CLASSES
from xrayvision.agreement import Confusion
from xrayvision.db.engine import rowcount
from xrayvision.db.models import (
    CLAIMABLE,
    DONE,
    ERROR,
    IGNORE,
    NONE,
    QUEUED,
    STATUSES,
    AIReport,
    AuditLog,
    Base,
    Exam,
    Patient,
    RadReport,
    Retrieval,
    State,
    utcnow,
)

MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class PatientInfo:
    cnp: str
    name: str = ""
    birth_date: dt.date | None = None
    sex: str = ""


@dataclass(frozen=True)
class ExamInfo:
    """What ingest knows about one instance; field names are the ``exams`` columns."""

    uid: str
    study_uid: str = ""
    series_uid: str = ""
    accession: str = ""
    modality: str = ""
    region: str = ""
    projection: str = ""
    protocol: str = ""
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    series_datetime: dt.datetime | None = None
    calling_aet: str = ""
    priority: int = 0
    status: str = "none"


class ExamRow(NamedTuple):
    exam: Exam
    patient: Patient | None
    ai: AIReport | None
    rad: RadReport | None


class PageRow(NamedTuple):
    """A row of :func:`exam_page`: the same attributes as :class:`ExamRow`'s entities, on
    plain objects (no ORM identity map)."""

    exam: SimpleNamespace
    patient: SimpleNamespace | None
    ai: SimpleNamespace | None
    rad: SimpleNamespace | None


@dataclass(frozen=True)
class ExamFilter:
    statuses: tuple[str, ...] = ()
    region: str = ""
    severity_min: int | None = None  # AI severity
    severity_max: int | None = None
    positive: int | None = None  # AI positive: -1, 0, 1
    reviewed: bool | None = None
    since: dt.datetime | None = None  # received at or after
    until: dt.datetime | None = None  # received before
    search: str = ""  # patient id prefix or name substring
    agreement: str = ""  # TP, TN, FP, FN at ``threshold``
    threshold: int = 5


@dataclass(frozen=True)
class Page:
    rows: list[PageRow]
    total: int
    page: int
    size: int
    pages: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pages", max(1, -(-self.total // self.size)))


# --- patients and exams ------------------------------------------------------------------


# Ingest records every received instance with these before it may acknowledge it, so
# they are Core statements built once per dialect (building costs more CPU than running).


def _dialect_insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


@functools.lru_cache(maxsize=4)
def _patient_upsert(insert):
    table = Patient.__table__
    stmt = insert(table).values({c: bindparam(c, type_=table.c[c].type)
                                 for c in ("cnp", "name", "birth_date", "sex", "created",
                                           "updated")})
    new = stmt.excluded
    return stmt.on_conflict_do_update(index_elements=["cnp"], set_={
        "name": case((new.name != "", new.name), else_=table.c.name),
        "birth_date": func.coalesce(new.birth_date, table.c.birth_date),
        "sex": case((new.sex != "", new.sex), else_=table.c.sex),
        "updated": new.updated,
    })


_EXAM_INSERT_COLUMNS = (*ExamInfo.__dataclass_fields__, "cnp", "created", "updated")


@functools.lru_cache(maxsize=4)
def _exam_insert(insert):
    table = Exam.__table__
    return insert(table).values(
        {c: bindparam(c, type_=table.c[c].type) for c in _EXAM_INSERT_COLUMNS}
    ).on_conflict_do_nothing(index_elements=["uid"]).returning(table.c.uid)


_EXAM_EXISTS = select(literal(1)).where(Exam.__table__.c.uid == bindparam("uid"))


def exam_exists(session: Session, uid: str) -> bool:
    return session.connection().execute(_EXAM_EXISTS, {"uid": uid}).first() is not None


IDENTITY_FIELDS = ("cnp", "study_uid", "series_uid", "accession", "modality")


def identity_of(info: ExamInfo, patient: PatientInfo | None) -> tuple[str, ...]:
    """The :data:`IDENTITY_FIELDS` of an instance about to be recorded (pure)."""
    return ((patient.cnp if patient is not None else "") or "", info.study_uid,
            info.series_uid, info.accession, info.modality)


def exam_identity(session: Session, uid: str) -> tuple[str, ...] | None:
    """Who and what a stored instance belongs to (:data:`IDENTITY_FIELDS`: patient,
    study, series, accession, modality); None when no exam has that SOP Instance UID."""
    row = session.execute(select(Exam.cnp, Exam.study_uid, Exam.series_uid, Exam.accession,
                                 Exam.modality).where(Exam.uid == uid)).first()
    return None if row is None else tuple(v or "" for v in row)


def _upsert_patient_row(session: Session, info: PatientInfo) -> None:
    now = utcnow()
    session.connection().execute(_patient_upsert(_dialect_insert(session)), {
        "cnp": info.cnp, "name": info.name, "birth_date": info.birth_date, "sex": info.sex,
        "created": now, "updated": now})


def upsert_patient(session: Session, info: PatientInfo) -> Patient:
    """Creates the patient or fills in what was missing; known fields are not blanked."""
    _upsert_patient_row(session, info)
    patient = session.get(Patient, info.cnp, populate_existing=True)
    assert patient is not None
    return patient


def insert_received(session: Session, info: ExamInfo,
                    patient: PatientInfo | None = None) -> bool:
    """Inserts the exam (and creates or completes its patient); returns False when an
    exam with this SOP Instance UID exists, and then changes nothing. Duplicates never
    make a second exam, also when two transactions insert the same one at once (the
    later one may then have completed the patient's fields before it found the exam)."""
    if exam_exists(session, info.uid):
        return False
    cnp = patient.cnp if patient is not None and patient.cnp else None
    if patient is not None and cnp:
        _upsert_patient_row(session, patient)
    now = utcnow()
    values = {f: getattr(info, f) for f in ExamInfo.__dataclass_fields__}
    inserted = session.connection().execute(_exam_insert(_dialect_insert(session)), {
        **values, "cnp": cnp, "created": now, "updated": now}).first()
    return inserted is not None


def add_exam(session: Session, info: ExamInfo,
             patient: PatientInfo | None = None) -> tuple[Exam, bool]:
    """:func:`insert_received`, returning (exam, created) with the exam as an ORM object."""
    created = insert_received(session, info, patient)
    exam = session.get(Exam, info.uid, populate_existing=True)
    assert exam is not None
    return exam, created


def get_exam(session: Session, uid: str) -> ExamRow | None:
    """The exam with its patient and both reports; None when unknown."""
    row = session.execute(_row_select().where(Exam.uid == uid)).first()
    return ExamRow(*row) if row else None


def set_status(session: Session, uid: str, status: str, error: str = "") -> bool:
    """Sets an exam's status (and error text); returns False when the exam is unknown."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    result = session.execute(
        update(Exam).where(Exam.uid == uid).values(status=status, error=error, updated=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return bool(rowcount(result))


def finish_conversion(session: Session, uid: str, status: str, error: str = "") -> Exam | None:
    """Moves an exam out of ``none`` (to queued, ignore or error) after conversion.

    Returns the exam, or None when it was not in ``none`` any more (converted meanwhile
    by another process), so each conversion is announced once.
    """
    if status not in (QUEUED, IGNORE, ERROR):
        raise ValueError(f"conversion cannot end in {status!r}")
    result = session.execute(
        update(Exam).where(Exam.uid == uid, Exam.status == NONE)
        .values(status=status, error=error[:2000], updated=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return session.get(Exam, uid) if rowcount(result) else None


def exams_with_status(session: Session, status: str, limit: int = 1000) -> list[str]:
    """UIDs of exams in ``status``, oldest first (e.g. ``none`` left at a crash)."""
    return list(
        session.scalars(
            select(Exam.uid).where(Exam.status == status).order_by(Exam.created).limit(limit)
        )
    )


def _row_select():
    return (
        select(Exam, Patient, AIReport, RadReport)
        .outerjoin(Patient, Patient.cnp == Exam.cnp)
        .outerjoin(AIReport, AIReport.uid == Exam.uid)
        .outerjoin(RadReport, RadReport.uid == Exam.uid)
    )


def agreement_condition(kind: str, threshold: int):
    """SQL condition for one agreement class between AI and radiologist severities.

    Positive means severity >= threshold; -1 (not assessed) on either side is in no class.
    """
    ai_pos = AIReport.severity >= threshold
    ai_neg = and_(AIReport.severity >= 0, AIReport.severity < threshold)
    rad_pos = RadReport.severity >= threshold
    rad_neg = and_(RadReport.severity >= 0, RadReport.severity < threshold)
    conditions = {
        "TP": and_(ai_pos, rad_pos),
        "TN": and_(ai_neg, rad_neg),
        "FP": and_(ai_pos, rad_neg),
        "FN": and_(ai_neg, rad_pos),
    }
    try:
        return conditions[kind.upper()]
    except KeyError:
        raise ValueError(f"agreement must be one of {', '.join(AGREEMENT_CLASSES)}") from None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(f: ExamFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if f.statuses:
        bad = [s for s in f.statuses if s not in STATUSES]
        if bad:
            raise ValueError(f"unknown status {bad[0]!r}; expected one of {', '.join(STATUSES)}")
        conds.append(Exam.status.in_(f.statuses))
    if f.region:
        conds.append(Exam.region == f.region)
    if f.severity_min is not None:
        conds.append(AIReport.severity >= f.severity_min)
    if f.severity_max is not None:
        conds.append(AIReport.severity <= f.severity_max)
    if f.positive is not None:
        conds.append(AIReport.positive == f.positive)
    if f.reviewed is not None:
        conds.append(AIReport.reviewed.is_(f.reviewed))
    if f.since is not None:
        conds.append(Exam.created >= f.since)
    if f.until is not None:
        conds.append(Exam.created < f.until)
    if f.search:
        needle = _escape_like(f.search.strip())
        conds.append(
            or_(
                Exam.cnp.like(needle + "%", escape="\\"),
                Patient.name.ilike("%" + needle + "%", escape="\\"),
            )
        )
    if f.agreement:
        conds.append(agreement_condition(f.agreement, f.threshold))
    return conds


_PAGE_TABLES = (("e", Exam), ("p", Patient), ("a", AIReport), ("r", RadReport))
_PAGE_COLUMNS = [c.label(f"{prefix}_{c.key}") for prefix, model in _PAGE_TABLES
                 for c in model.__table__.columns]


def _row_of(mapping) -> PageRow:
    """A PageRow of plain attribute objects from one Core row (no ORM identity map:
    a page of 500 rows costs a fraction of what ORM entities cost)."""
    parts: dict[str, dict[str, Any]] = {prefix: {} for prefix, _ in _PAGE_TABLES}
    for key, value in mapping.items():
        prefix, _, name = key.partition("_")
        parts[prefix][name] = value
    key_of = {"e": "uid", "p": "cnp", "a": "uid", "r": "uid"}
    exam, patient, ai, rad = (SimpleNamespace(**parts[p]) if parts[p][key_of[p]] is not None
                              else None for p, _ in _PAGE_TABLES)
    assert exam is not None  # every row has its exam
    return PageRow(exam, patient, ai, rad)


def exam_page(session: Session, f: ExamFilter = ExamFilter(), page: int = 1,
              size: int = 50) -> list[PageRow]:
    """One page of exams (newest first) matching ``f``; ``size`` is capped at
    MAX_PAGE_SIZE, ``page`` starts at 1. Raises ValueError for an unknown status or
    agreement class. Rows are read-only attribute objects, not ORM entities."""
    page = max(1, page)
    size = max(1, min(size, MAX_PAGE_SIZE))
    e, p, a, r = (m.__table__ for _, m in _PAGE_TABLES)
    query = (
        select(*_PAGE_COLUMNS)
        .select_from(e.outerjoin(p, p.c.cnp == e.c.cnp).outerjoin(a, a.c.uid == e.c.uid)
                     .outerjoin(r, r.c.uid == e.c.uid))
        .where(*_conditions(f))
        .order_by(e.c.created.desc(), e.c.uid.desc())
        .offset((page - 1) * size)
        .limit(size)
    )
    return [_row_of(row) for row in session.connection().execute(query).mappings()]


def count_matching(session: Session, f: ExamFilter = ExamFilter()) -> int:
    """How many exams match ``f`` (joins only the tables the filter needs)."""
    count = select(func.count()).select_from(Exam)
    if any(c is not None for c in (f.severity_min, f.severity_max, f.positive, f.reviewed)) or (
        f.agreement
    ):
        count = count.outerjoin(AIReport, AIReport.uid == Exam.uid)
    if f.agreement:
        count = count.outerjoin(RadReport, RadReport.uid == Exam.uid)
    if f.search:
        count = count.outerjoin(Patient, Patient.cnp == Exam.cnp)
    return session.scalar(count.where(*_conditions(f))) or 0


def list_exams(session: Session, f: ExamFilter = ExamFilter(), page: int = 1,
               size: int = 50) -> Page:
    """:func:`exam_page` with :func:`count_matching` in one transaction."""
    size = max(1, min(size, MAX_PAGE_SIZE))
    return Page(rows=exam_page(session, f, page, size), total=count_matching(session, f),
                page=max(1, page), size=size)


# --- reports -------------------------------------------------------------------------------

_AI_FIELDS = {c.key for c in AIReport.__table__.columns} - {"uid", "created", "updated"}
_RAD_FIELDS = {c.key for c in RadReport.__table__.columns} - {"uid", "created", "updated"}


@functools.lru_cache(maxsize=64)
def _upsert_statement(dialect: str, table_name: str, fields: tuple[str, ...]):
    """INSERT ... ON CONFLICT (uid) DO UPDATE for one set of fields, built once: building
    a statement costs more CPU than running it on the relay's per-exam path."""
    table = Base.metadata.tables[table_name]
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    columns = ("uid", "created", "updated", *fields)
    stmt = insert(table).values({c: bindparam(c, type_=table.c[c].type) for c in columns})
    if fields:
        return stmt.on_conflict_do_update(
            index_elements=["uid"],
            set_={**{f: stmt.excluded[f] for f in fields}, "updated": stmt.excluded.updated})
    return stmt.on_conflict_do_nothing(index_elements=["uid"])


def _upsert_report(session: Session, model: Any, allowed: set[str], uid: str,
                   fields: dict) -> None:
    """One INSERT ... ON CONFLICT DO UPDATE on the table (both backends): a single round
    trip and no ORM bookkeeping, since this sits on the relay's per-exam path."""
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown {model.__tablename__} fields: {', '.join(sorted(unknown))}")
    now = utcnow()
    names = tuple(sorted(fields))
    stmt = _upsert_statement(session.get_bind().dialect.name, model.__tablename__, names)
    session.connection().execute(stmt, {"uid": uid, "created": now, "updated": now, **fields})


def save_ai_report(session: Session, uid: str, **fields) -> None:
    """Creates or updates the exam's AI report with ``fields`` (columns of ai_reports)."""
    _upsert_report(session, AIReport, _AI_FIELDS, uid, fields)


def save_rad_report(session: Session, uid: str, **fields) -> None:
    """Creates or updates the exam's radiologist report (columns of rad_reports)."""
    _upsert_report(session, RadReport, _RAD_FIELDS, uid, fields)


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


def _report_context_statement():
    e, p, a = Exam.__table__.c, Patient.__table__.c, AIReport.__table__.c
    return (
        select(e.uid, e.region, e.projection, e.created, e.series_datetime, e.cnp,
               p.name, p.sex, p.birth_date, a.text)
        .select_from(Exam.__table__.outerjoin(Patient.__table__, p.cnp == e.cnp)
                     .outerjoin(AIReport.__table__, a.uid == e.uid))
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
                         row[7] or "", row[8], row[9] or "")


def get_ai_report(session: Session, uid: str) -> AIReport | None:
    return session.get(AIReport, uid)


def get_rad_report(session: Session, uid: str) -> RadReport | None:
    return session.get(RadReport, uid)


# --- dashboard counts ----------------------------------------------------------------------


def queue_counts(session: Session) -> dict[str, int]:
    """Number of exams in every status (zeros included): the dashboard's queue sizes."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, n in session.execute(select(Exam.status, func.count()).group_by(Exam.status)):
        counts[status] = n
    return counts


def oldest_claimable(session: Session) -> dt.datetime | None:
    """Receipt time of the oldest exam waiting for the model (None when the queue is empty)."""
    return session.scalar(select(func.min(Exam.created)).where(Exam.status.in_(CLAIMABLE)))


# --- audit ---------------------------------------------------------------------------------


def audit(session: Session, action: str, *, username: str = "", target: str = "",
          remote: str = "", detail: str = "") -> None:
    session.add(
        AuditLog(username=username, action=action, target=target, remote=remote,
                 detail=detail[:4000], ts=utcnow())
    )


# --- maintenance ---------------------------------------------------------------------------


def purge_error_exams(session: Session, older_than: dt.datetime, limit: int = 1000) -> list[str]:
    """Deletes up to ``limit`` ``error`` exams last updated before ``older_than`` (their
    reports go with them); returns their UIDs so the caller removes the images too."""
    uids = list(
        session.scalars(
            select(Exam.uid)
            .where(Exam.status == ERROR, Exam.updated < older_than)
            .order_by(Exam.updated)
            .limit(limit)
        )
    )
    _delete_exams(session, uids)
    return uids


def _delete_exams(session: Session, uids: Sequence[str]) -> None:
    if not uids:
        return
    for model in (AIReport, RadReport, Exam):  # explicit: SQLite may run without FK cascades
        session.execute(
            delete(model).where(model.uid.in_(uids)),
            execution_options={"synchronize_session": False},
        )


def exams_received_before(session: Session, cutoff: dt.datetime, after_uid: str = "",
                          limit: int = 1000) -> list[str]:
    """UIDs of exams received before ``cutoff``, in UID order after ``after_uid`` (paging)."""
    return list(
        session.scalars(
            select(Exam.uid)
            .where(Exam.created < cutoff, Exam.uid > after_uid)
            .order_by(Exam.uid)
            .limit(limit)
        )
    )


def count_exams(session: Session, uids: Iterable[str] | None = None) -> int:
    query = select(func.count()).select_from(Exam)
    if uids is not None:
        query = query.where(Exam.uid.in_(list(uids)))
    return session.scalar(query) or 0


# --- query/retrieve and persisted state ----------------------------------------------------


def get_state(session: Session, key: str) -> str | None:
    row = session.get(State, key)
    return row.value if row else None


def set_state(session: Session, key: str, value: str) -> None:
    row = session.get(State, key)
    if row is None:
        session.add(State(key=key, value=value, updated=utcnow()))
    else:
        row.value, row.updated = value, utcnow()


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


# --- FHIR poller and enrichment ------------------------------------------------------------


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


def enrich_patient(session: Session, uid: str, info: PatientInfo) -> bool:
    """Fills in the exam's patient from the hospital system: birth date and sex replace
    what DICOM said (the HIS is authoritative), the name only when it was empty; an exam
    without a patient id gets ``info.cnp``. Returns False when the exam is unknown."""
    exam = session.get(Exam, uid)
    if exam is None:
        return False
    cnp = exam.cnp or info.cnp
    if not cnp:
        return True
    patient = session.get(Patient, cnp)
    if patient is None:
        upsert_patient(session, PatientInfo(cnp=cnp, name=info.name, birth_date=info.birth_date,
                                            sex=info.sex))
    else:
        if info.birth_date:
            patient.birth_date = info.birth_date
        if info.sex:
            patient.sex = info.sex
        if info.name and not patient.name:
            patient.name = info.name
    if not exam.cnp:
        exam.cnp = cnp
    return True


# --- agreement between AI and radiologist --------------------------------------------------

AGREEMENT_GROUPS = ("all", "region", "radiologist", "day")


def agreement_counts(session: Session, threshold: int, by: str = "all",
                     since: dt.datetime | None = None,
                     until: dt.datetime | None = None) -> dict[str, Confusion]:
    """TP/TN/FP/FN and not-assessed counts of exams with both reports, at ``threshold``,
    grouped ``by`` all (key ""), region, radiologist or day of receipt (UTC,
    YYYY-MM-DD); :func:`xrayvision.agreement.roll_up` makes weeks and months of days."""
    if by not in AGREEMENT_GROUPS:
        raise ValueError(f"group must be one of {', '.join(AGREEMENT_GROUPS)}")
    key: SQLColumnExpression[Any]
    if by == "region":
        key = Exam.region
    elif by == "radiologist":
        key = RadReport.radiologist
    elif by == "day":
        created: SQLColumnExpression[Any] = Exam.created
        if session.get_bind().dialect.name == "postgresql":
            created = func.timezone("UTC", Exam.created)
        key = func.date(created)
    else:
        key = literal("")
    not_assessed = or_(AIReport.severity < 0, RadReport.severity < 0)
    sums = [func.sum(case((agreement_condition(k, threshold), 1), else_=0))
            for k in AGREEMENT_CLASSES]
    query = (
        select(key, *sums, func.sum(case((not_assessed, 1), else_=0)))
        .select_from(Exam)
        .join(AIReport, AIReport.uid == Exam.uid)
        .join(RadReport, RadReport.uid == Exam.uid)
        .where(RadReport.checked.is_(True))
        .group_by(key)
    )
    if since is not None:
        query = query.where(Exam.created >= since)
    if until is not None:
        query = query.where(Exam.created < until)
    result: dict[str, Confusion] = {}
    for row in session.execute(query):
        tp, tn, fp, fn, na = (int(v or 0) for v in row[1:])
        result[str(row[0] or "")] = Confusion(tp=tp, tn=tn, fp=fp, fn=fn, not_assessed=na)
    return result


# --- reviews -------------------------------------------------------------------------------


def review_ai_report(session: Session, uid: str, *, correct: bool, note: str,
                     username: str) -> bool:
    """Records a radiologist's verdict on the exam's AI report; False when the exam has no
    AI report."""
    result = session.execute(
        update(AIReport).where(AIReport.uid == uid).values(
            reviewed=True, review_correct=1 if correct else 0, review_note=note[:4000],
            reviewed_by=username[:128], reviewed_at=utcnow(), updated=utcnow()),
        execution_options={"synchronize_session": False},
    )
    return bool(rowcount(result))


def insert_state(session: Session, key: str, value: str) -> None:
    """Adds a state row; raises IntegrityError when the key exists (first writer wins)."""
    session.add(State(key=key, value=value, updated=utcnow()))
    session.flush()
