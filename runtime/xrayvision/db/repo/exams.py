"""Patients and exams as ingest records them (Core statements built once per dialect:
they run for every received instance), conversion's outcome, the same-UID identity,
a patient's enrichment from the HIS, and the retention purges."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from sqlalchemy import (
    Select,
    bindparam,
    case,
    delete,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from xrayvision.db.engine import rowcount
from xrayvision.db.models import (
    ERROR,
    IGNORE,
    NONE,
    QUEUED,
    REASON_CODES,
    STAT,
    AIReport,
    AIReportVersion,
    Base,
    Exam,
    Patient,
    RadReport,
    Review,
    utcnow,
)
from xrayvision.db.repo.tallies import restate_tallies

DialectInsert: TypeAlias = postgresql.Insert | sqlite.Insert
InsertFn: TypeAlias = Callable[[type[Base]], DialectInsert]


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
    sop_class: str = ""
    patient_name: str = ""  # as received (PN)
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


# Ingest records every received instance with these before it may acknowledge it, so
# they are Core statements built once per dialect (building costs more CPU than running).
def _dialect_insert(session: Session) -> InsertFn:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


@functools.lru_cache(maxsize=4)
def _patient_upsert(insert: InsertFn) -> DialectInsert:
    table = Patient.__table__
    stmt = insert(Patient).values({c: bindparam(c, type_=table.c[c].type)
                                 for c in ("cnp", "name", "birth_date", "sex", "created",
                                           "updated")})
    new = stmt.excluded
    return stmt.on_conflict_do_update(index_elements=["cnp"], set_={
        "name": case((new.name != "", new.name), else_=table.c.name),
        "birth_date": func.coalesce(new.birth_date, table.c.birth_date),
        "sex": case((new.sex != "", new.sex), else_=table.c.sex),
        "updated": new.updated,
    })


_EXAM_INSERT_COLUMNS = (*ExamInfo.__dataclass_fields__, "cnp", "triage", "created", "updated")


@functools.lru_cache(maxsize=4)
def _exam_insert(insert: InsertFn) -> ReturningInsert[str]:
    table = Exam.__table__
    return insert(Exam).values(
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
    triage = int(info.priority >= STAT)  # a stat exam is critical before any read
    inserted = session.connection().execute(_exam_insert(_dialect_insert(session)), {
        **values, "cnp": cnp, "triage": triage, "created": now, "updated": now}).first()
    return inserted is not None


def get_exam(session: Session, uid: str) -> ExamRow | None:
    """The exam with its patient and both reports; None when unknown."""
    row = session.execute(_row_select().where(Exam.uid == uid)).first()
    return ExamRow(*row) if row else None


@dataclass(frozen=True)
class StudyImage:
    """One image of a study, as the exam page lists the study's images."""

    uid: str
    projection: str
    series_description: str
    status: str
    severity: int  # the current AI read's, -1: none
    created: dt.datetime


def study_images(session: Session, study_uid: str, limit: int = 100) -> list[StudyImage]:
    """The images of a study in order of receipt (at most ``limit``); [] for no study
    UID (an instance without one is a study of its own)."""
    if not study_uid:
        return []
    rows = session.execute(
        select(Exam.uid, Exam.projection, Exam.series_description, Exam.status,
               Exam.severity, Exam.created)
        .where(Exam.study_uid == study_uid).order_by(Exam.created, Exam.uid).limit(limit))
    return [StudyImage(*row) for row in rows]


def study_sizes(session: Session, study_uids: Sequence[str]) -> dict[str, int]:
    """How many images each of ``study_uids`` has received (one indexed count per page
    of the worklist); UIDs with none are absent."""
    wanted = sorted({u for u in study_uids if u})
    if not wanted:
        return {}
    rows = session.execute(select(Exam.study_uid, func.count()).where(
        Exam.study_uid.in_(wanted)).group_by(Exam.study_uid))
    return {uid: int(n) for uid, n in rows}


def finish_conversion(session: Session, uid: str, status: str, error: str = "",
                      code: str = "") -> Exam | None:
    """Moves an exam out of ``none`` (to queued, ignore or error) after conversion; for
    ignore and error, ``error`` says why and ``code`` is one of ``REASON_CODES``.

    Returns the exam, or None when it was not in ``none`` any more (converted meanwhile
    by another process), so each conversion is announced once.
    """
    if status not in (QUEUED, IGNORE, ERROR):
        raise ValueError(f"conversion cannot end in {status!r}")
    if code and code not in REASON_CODES:
        raise ValueError(f"unknown reason code {code!r}")
    result = session.execute(
        update(Exam).where(Exam.uid == uid, Exam.status == NONE)
        .values(status=status, error=error[:2000], reason_code=code, updated=utcnow()),
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


def _row_select() -> Select[Exam, Patient, AIReport, RadReport]:
    return (
        select(Exam, Patient, AIReport, RadReport)
        .outerjoin(Patient, Patient.cnp == Exam.cnp)
        .outerjoin(AIReport, AIReport.uid == Exam.read_uid)
        .outerjoin(RadReport, RadReport.uid == Exam.uid)
    )


def delete_exams(session: Session, uids: Sequence[str]) -> None:
    """Deletes the exams ``uids`` with their radiologist reports and their own AI reads
    (callers keep exams whose read a user may have reviewed: see
    ``repo.purge_error_exams``), and what they counted in the statistics."""
    if not uids:
        return
    # explicit: SQLite may run without FK cascades
    for model in (AIReportVersion, Review, AIReport, RadReport, Exam):
        session.execute(
            delete(model).where(model.uid.in_(uids)),
            execution_options={"synchronize_session": False},
        )
    restate_tallies(session, uids)


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

