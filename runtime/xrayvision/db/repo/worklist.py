"""The dashboard's worklists: exams (or studies) filtered and paged in one Core query
(plain rows, no ORM identity map), and the total for the pager."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    func,
    or_,
    select,
)
from sqlalchemy.orm import Session

from xrayvision.db.models import (
    STATUSES,
    AIReport,
    Exam,
    Patient,
    RadReport,
    Study,
)
from xrayvision.db.repo.agreement import agreement_condition

MAX_PAGE_SIZE = 500


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
    critical: bool | None = None  # True: critical and not reviewed yet (triage 1)
    accession: str = ""  # the accession number, exactly
    modality: str = ""  # CR, DX, ...
    sort: str = "urgent"  # one of SORTS


# The worklist's orders (every one ends in the newest first, then the UID: a total order,
# so that pages neither repeat nor skip rows):
#   urgent    critical and not reviewed first, then priority, AI severity, newest
#   received  newest first
#   severity  AI severity (highest first), then newest
#   priority  priority (highest first), then newest
SORTS = ("urgent", "received", "severity", "priority")

@dataclass(frozen=True)
class Page:
    rows: list[PageRow]
    total: int
    page: int
    size: int
    pages: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pages", max(1, -(-self.total // self.size)))


def shown_total(counted: int, page: int, size: int, shown: int) -> int:
    """The list's total as the page just read proves it (pure): ``counted`` may be a
    few seconds old (the count is cached); a page not full ends the list, so the total
    is exact, and a full one shows at least that many."""
    if shown < size and (shown or page == 1):
        return (page - 1) * size + shown
    if not shown:  # past the end
        return min(counted, (page - 1) * size)
    return max(counted, page * size)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _region_in_list(regions: Any, region: str) -> ColumnElement[bool]:
    """``region`` is one of the comma-separated ``regions`` (a study's)."""
    r = _escape_like(region)
    return or_(regions == region, regions.like(r + ",%", escape="\\"),
               regions.like("%," + r, escape="\\"), regions.like("%," + r + ",%", escape="\\"))


def _conditions(f: ExamFilter, unit: Any = Exam) -> list[ColumnElement[bool]]:
    """The filter on exams, or on studies (``unit=Study``: its own read's severity and
    review, one of its regions; ``agreement`` is per image only)."""
    study = unit is Study
    if study and f.agreement:
        raise ValueError("agreement is not a filter of the study list")
    severity, reviewed = ((Study.severity, Study.reviewed) if study
                          else (AIReport.severity, AIReport.reviewed))
    conds: list[ColumnElement[bool]] = []
    if f.statuses:
        bad = [s for s in f.statuses if s not in STATUSES]
        if bad:
            raise ValueError(f"unknown status {bad[0]!r}; expected one of {', '.join(STATUSES)}")
        conds.append(unit.status.in_(f.statuses))
    if f.region:
        conds.append(_region_in_list(Study.regions, f.region) if study
                     else Exam.region == f.region)
    if f.severity_min is not None:
        conds.append(severity >= f.severity_min)
    if f.severity_max is not None:
        conds.append(severity <= f.severity_max)
    if f.positive is not None:
        conds.append(AIReport.positive == f.positive)
    if f.reviewed is not None:
        conds.append(reviewed.is_(f.reviewed))
    if f.since is not None:
        conds.append(unit.created >= f.since)
    if f.until is not None:
        conds.append(unit.created < f.until)
    if f.search:
        needle = _escape_like(f.search.strip())
        conds.append(
            or_(
                unit.cnp.like(needle + "%", escape="\\"),
                Patient.name.ilike("%" + needle + "%", escape="\\"),
            )
        )
    if f.agreement:
        conds.append(agreement_condition(f.agreement, f.threshold))
    if f.critical is not None:
        conds.append(unit.triage == (1 if f.critical else 0))
    if f.accession:
        conds.append(unit.accession == f.accession)
    if f.modality:
        conds.append(unit.modality == f.modality)
    return conds


def _order(sort: str, unit: Any = Exam) -> list[ColumnElement[Any]]:
    e = unit.__table__.c
    keys = {"urgent": [e.triage, e.priority, e.severity], "received": [],
            "severity": [e.severity], "priority": [e.priority]}
    if sort not in keys:
        raise ValueError(f"unknown sort {sort!r}; expected one of {', '.join(SORTS)}")
    return [k.desc() for k in (*keys[sort], e.created, e.uid)]


_PAGE_TABLES = (("e", Exam), ("p", Patient), ("a", AIReport), ("r", RadReport))


_PAGE_COLUMNS = [c.label(f"{prefix}_{c.key}") for prefix, model in _PAGE_TABLES
                 for c in model.__table__.columns]


def _parts(mapping: RowMapping, tables: tuple[tuple[str, Any], ...]) -> list[Any]:
    """One Core row of ``<prefix>_<column>`` labels split into a plain attribute object
    per table (None for an outer join's missing row: its key is NULL). No ORM identity
    map: a page of 500 rows costs a fraction of what ORM entities cost."""
    parts: dict[str, dict[str, Any]] = {prefix: {} for prefix, _ in tables}
    for key, value in mapping.items():
        prefix, _, name = key.partition("_")
        parts[prefix][name] = value
    return [SimpleNamespace(**parts[prefix])
            if parts[prefix][model.__table__.primary_key.columns[0].key] is not None else None
            for prefix, model in tables]


def _row_of(mapping: RowMapping) -> PageRow:
    exam, patient, ai, rad = _parts(mapping, _PAGE_TABLES)
    assert exam is not None  # every row has its exam
    return PageRow(exam, patient, ai, rad)


def exam_page(session: Session, f: ExamFilter = ExamFilter(), page: int = 1,
              size: int = 50) -> list[PageRow]:
    """One page of exams matching ``f`` in the order ``f.sort`` (:data:`SORTS`); ``size``
    is capped at MAX_PAGE_SIZE, ``page`` starts at 1. Raises ValueError for an unknown
    status, agreement class or sort. Rows are read-only attribute objects, not ORM
    entities."""
    page = max(1, page)
    size = max(1, min(size, MAX_PAGE_SIZE))
    e, p, a, r = (m.__table__ for _, m in _PAGE_TABLES)
    query = (
        select(*_PAGE_COLUMNS)
        .select_from(e.outerjoin(p, p.c.cnp == e.c.cnp).outerjoin(a, a.c.uid == e.c.read_uid)
                     .outerjoin(r, r.c.uid == e.c.uid))
        .where(*_conditions(f))
        .order_by(*_order(f.sort))
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
        count = count.outerjoin(AIReport, AIReport.uid == Exam.read_uid)
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



# --- the study list --------------------------------------------------------------------------


class StudyRow(NamedTuple):
    """A row of :func:`study_page`: the study (with ``first_image``, the UID of its first
    image received), its patient, its current AI read and its radiologist report."""

    study: SimpleNamespace
    patient: SimpleNamespace | None
    ai: SimpleNamespace | None
    rad: SimpleNamespace | None


_STUDY_TABLES = (("s", Study), ("p", Patient), ("a", AIReport), ("r", RadReport))
_FIRST_IMAGE = (select(Exam.uid).where(or_(Exam.study_uid == Study.uid, Exam.uid == Study.uid))
                .order_by(Exam.created, Exam.uid).limit(1).correlate(Study).scalar_subquery())
_STUDY_COLUMNS = [*(c.label(f"{prefix}_{c.key}") for prefix, model in _STUDY_TABLES
                    for c in model.__table__.columns),
                  _FIRST_IMAGE.label("s_first_image")]


def study_page(session: Session, f: ExamFilter = ExamFilter(), page: int = 1,
               size: int = 50) -> list[StudyRow]:
    """One page of studies matching ``f`` in the order ``f.sort`` (as :func:`exam_page`;
    the keys are the study's: its read's severity, its priority, its first image's
    receipt). Raises ValueError as :func:`exam_page` does, and for ``agreement``."""
    page = max(1, page)
    size = max(1, min(size, MAX_PAGE_SIZE))
    s, p, a, r = (m.__table__ for _, m in _STUDY_TABLES)
    query = (
        select(*_STUDY_COLUMNS)
        .select_from(s.outerjoin(p, p.c.cnp == s.c.cnp).outerjoin(a, a.c.uid == s.c.uid)
                     .outerjoin(r, r.c.uid == s.c.uid))
        .where(*_conditions(f, Study))
        .order_by(*_order(f.sort, Study))
        .offset((page - 1) * size)
        .limit(size)
    )
    rows = []
    for mapping in session.connection().execute(query).mappings():
        study, patient, ai, rad = _parts(mapping, _STUDY_TABLES)
        assert study is not None  # every row has its study
        rows.append(StudyRow(study, patient, ai, rad))
    return rows


def count_studies(session: Session, f: ExamFilter = ExamFilter()) -> int:
    """How many studies match ``f`` (joins only the tables the filter needs)."""
    count = select(func.count()).select_from(Study)
    if f.positive is not None:
        count = count.outerjoin(AIReport, AIReport.uid == Study.uid)
    if f.search:
        count = count.outerjoin(Patient, Patient.cnp == Study.cnp)
    return session.scalar(count.where(*_conditions(f, Study))) or 0
