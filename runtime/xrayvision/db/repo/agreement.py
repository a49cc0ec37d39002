"""Agreement between the AI's and the radiologist's severities (TP, TN, FP, FN at a
threshold), counted overall or by region, radiologist or day, of exams or of studies."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    ColumnElement,
    SQLColumnExpression,
    and_,
    case,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session

from xrayvision.agreement import CLASSES as AGREEMENT_CLASSES
from xrayvision.agreement import Confusion
from xrayvision.db.models import (
    AIReport,
    Exam,
    RadReport,
    Study,
)


def agreement_condition(kind: str, threshold: int) -> ColumnElement[bool]:
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


AGREEMENT_GROUPS = ("all", "region", "radiologist", "model", "day")


def agreement_counts(session: Session, threshold: int, by: str = "all",
                     since: dt.datetime | None = None,
                     until: dt.datetime | None = None, *,
                     per_study: bool = False) -> dict[str, Confusion]:
    """TP/TN/FP/FN and not-assessed counts of exams with both reports, at ``threshold``,
    grouped ``by`` all (key ""), region, radiologist, model (of the AI read) or day of
    receipt (UTC, YYYY-MM-DD); :func:`xrayvision.agreement.roll_up` makes weeks and
    months of days.
    ``per_study``: of studies (the study's AI read against the study's radiologist
    report; the region key is the study's regions, e.g. "chest" or "chest,hand")."""
    if by not in AGREEMENT_GROUPS:
        raise ValueError(f"group must be one of {', '.join(AGREEMENT_GROUPS)}")
    unit: Any = Study if per_study else Exam
    key: SQLColumnExpression[Any]
    if by == "region":
        key = Study.regions if per_study else Exam.region
    elif by == "radiologist":
        key = RadReport.radiologist
    elif by == "model":
        key = AIReport.model
    elif by == "day":
        created: SQLColumnExpression[Any] = unit.created
        if session.get_bind().dialect.name == "postgresql":
            created = func.timezone("UTC", unit.created)
        key = func.date(created)
    else:
        key = literal("")
    not_assessed = or_(AIReport.severity < 0, RadReport.severity < 0)
    sums = [func.sum(case((agreement_condition(k, threshold), 1), else_=0))
            for k in AGREEMENT_CLASSES]
    query = (
        select(key, *sums, func.sum(case((not_assessed, 1), else_=0)))
        .select_from(unit)
        .join(AIReport, AIReport.uid == (Study.uid if per_study else Exam.read_uid))
        .join(RadReport, RadReport.uid == unit.uid)
        .where(RadReport.checked.is_(True))
        .group_by(key)
    )
    if since is not None:
        query = query.where(unit.created >= since)
    if until is not None:
        query = query.where(unit.created < until)
    result: dict[str, Confusion] = {}
    for row in session.execute(query):
        tp, tn, fp, fn, na = (int(v or 0) for v in row[1:])
        result[str(row[0] or "")] = Confusion(tp=tp, tn=tn, fp=fp, fn=fn, not_assessed=na)
    return result
