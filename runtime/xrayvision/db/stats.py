"""Aggregate reads for the dashboard's statistics, each ``fn(session, ...)``.

Severity histograms, throughput per day and review counts; the agreement figures come
from :func:`xrayvision.db.repo.agreement_counts`. All days are UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, ColumnExpressionArgument, Select, func, select
from sqlalchemy.orm import Session

from xrayvision.db.models import DONE, AIReport, Exam, RadReport, Study

SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")


def _day(session: Session, column: ColumnExpressionArgument[dt.datetime]) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        column = func.timezone("UTC", column)
    return func.date(column)


def _window(query: SelectT, since: dt.datetime | None, until: dt.datetime | None) -> SelectT:
    if since is not None:
        query = query.where(Exam.created >= since)
    if until is not None:
        query = query.where(Exam.created < until)
    return query


def _reads(query: SelectT, since: dt.datetime | None, until: dt.datetime | None) -> SelectT:
    """``query`` on ``ai_reports`` limited to reads of exams or studies received in the
    window (a read is an exam's or a study's: received when it, or its first image, was)."""
    if since is None and until is None:  # every read: no join
        return query
    query = (query.outerjoin(Exam, Exam.uid == AIReport.uid)
             .outerjoin(Study, Study.uid == AIReport.uid))
    received = func.coalesce(Exam.created, Study.created)
    if since is not None:
        query = query.where(received >= since)
    if until is not None:
        query = query.where(received < until)
    return query


def severity_histogram(session: Session, source: str, since: dt.datetime | None = None,
                       until: dt.datetime | None = None, *,
                       per_study: bool = False) -> dict[int, int]:
    """Reports by severity (-1..10, zeros included) of ``source`` ai or rad; radiologist
    reports of images, or ``per_study`` of studies (as the AI reads are then)."""
    model = AIReport if source == "ai" else RadReport
    query = select(model.severity, func.count())
    if model is RadReport and per_study:
        query = query.join(Study, Study.uid == model.uid).where(RadReport.checked.is_(True))
        if since is not None:
            query = query.where(Study.created >= since)
        if until is not None:
            query = query.where(Study.created < until)
    elif model is RadReport:
        query = _window(query.join(Exam, Exam.uid == model.uid)
                        .where(RadReport.checked.is_(True)), since, until)
    else:
        query = _reads(query.select_from(AIReport), since, until)
    counts = dict.fromkeys(range(-1, 11), 0)
    for severity, n in session.execute(query.group_by(model.severity)):
        counts[int(severity)] = n
    return counts


def review_counts(session: Session, since: dt.datetime | None = None,
                  until: dt.datetime | None = None) -> dict[str, int]:
    """AI reports reviewed correct, incorrect, and not reviewed."""
    query = _reads(select(AIReport.review_correct, func.count()).select_from(AIReport),
                   since, until).group_by(AIReport.review_correct)
    names = {1: "correct", 0: "incorrect", -1: "not_reviewed"}
    counts = dict.fromkeys(names.values(), 0)
    for verdict, n in session.execute(query):
        counts[names.get(int(verdict), "not_reviewed")] += n
    return counts


def throughput(session: Session, since: dt.datetime | None = None,
               until: dt.datetime | None = None) -> dict[str, dict[str, int]]:
    """Per UTC day (YYYY-MM-DD): exams received, and of those reported (done)."""
    day = _day(session, Exam.created)
    query = select(day, Exam.status, func.count()).group_by(day, Exam.status)
    result: dict[str, dict[str, int]] = {}
    for key, status, n in session.execute(_window(query, since, until)):
        row = result.setdefault(str(key), {"received": 0, "reported": 0})
        row["received"] += n
        if status == DONE:
            row["reported"] += n
    return dict(sorted(result.items()))


def counts_by(session: Session, column: str, since: dt.datetime | None = None,
              until: dt.datetime | None = None) -> dict[str, int]:
    """Exams by ``region`` or (radiologist reports by) ``radiologist``."""
    if column == "region":
        query = select(Exam.region, func.count()).group_by(Exam.region)
    elif column == "radiologist":
        query = (select(RadReport.radiologist, func.count())
                 .join(Exam, Exam.uid == RadReport.uid).group_by(RadReport.radiologist))
    else:
        raise ValueError("column must be region or radiologist")
    return {str(k or ""): n for k, n in session.execute(_window(query, since, until))}


def model_latency(session: Session, since: dt.datetime | None = None,
                  until: dt.datetime | None = None) -> dict[str, dict[str, float]]:
    """Average model latency (seconds) and report count per endpoint."""
    query = _reads(select(AIReport.endpoint, func.avg(AIReport.latency), func.count())
                   .select_from(AIReport), since, until).group_by(AIReport.endpoint)
    return {str(e or ""): {"avg_seconds": round(float(avg or 0.0), 3), "reports": n}
            for e, avg, n in session.execute(query)}
