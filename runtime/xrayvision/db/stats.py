"""Aggregate reads for the dashboard's statistics, each ``fn(session, ...)``.

The global figures (severity histograms, agreement, reviews, model latency:
:func:`figures`) are summed from the running tallies of whole days and counted from the
reports only for the parts of days at a window's edges; throughput per day and the
counts by region or radiologist are counted from the exams; agreement by group comes
from :func:`xrayvision.db.repo.agreement_counts`. All days are UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, ColumnExpressionArgument, Select, func, select, union_all
from sqlalchemy.orm import Session

from xrayvision.agreement import Figures
from xrayvision.db.models import (
    DONE,
    TALLY_IMAGE,
    TALLY_NONE,
    TALLY_READ,
    TALLY_STUDY,
    AIReport,
    AIReportVersion,
    Exam,
    RadReport,
    Study,
    Tally,
)

SelectT = TypeVar("SelectT", bound="Select[*tuple[Any, ...]]")


def _day(session: Session, column: ColumnExpressionArgument[dt.datetime]) -> ColumnElement[Any]:
    if session.get_bind().dialect.name == "postgresql":
        column = func.timezone("UTC", column)
    return func.date(column)


def _window(query: SelectT, since: dt.datetime | None, until: dt.datetime | None,
            unit: Any = Exam) -> SelectT:
    """``query`` limited to ``unit`` (exams, or studies) received in the window."""
    if since is not None:
        query = query.where(unit.created >= since)
    if until is not None:
        query = query.where(unit.created < until)
    return query


def _reads(since: dt.datetime | None, until: dt.datetime | None) -> Any:
    """The AI reads of exams or studies received in the window (a read is an exam's or
    a study's: received when it, or its first image, was), as a subquery of their
    severity, review_correct, endpoint, latency and model. Each half is found from its unit's
    receipt index, so a short window reads only its own reads."""
    a = AIReport
    columns = (a.severity, a.review_correct, a.endpoint, a.latency, a.model)
    if since is None and until is None:  # every read: no join
        return select(*columns).subquery()
    of_exams = _window(select(*columns).join(Exam, Exam.uid == a.uid), since, until)
    # (a study keyed by its image's UID is that image's: counted once, as the image's)
    of_studies = _window(select(*columns).join(Study, Study.uid == a.uid)
                         .where(~select(Exam.uid).where(Exam.uid == a.uid).exists()),
                         since, until, Study)
    return union_all(of_exams, of_studies).subquery()


def severity_histogram(session: Session, source: str, since: dt.datetime | None = None,
                       until: dt.datetime | None = None, *,
                       per_study: bool = False) -> dict[int, int]:
    """Reports by severity (-1..10, zeros included) of ``source`` ai or rad, counted from
    the reports; radiologist reports of images, or ``per_study`` of studies (as the AI
    reads are then)."""
    query: Any
    if source == "ai":
        reads = _reads(since, until)
        query = select(reads.c.severity, func.count()).group_by(reads.c.severity)
    else:
        unit: Any = Study if per_study else Exam
        query = _window(select(RadReport.severity, func.count())
                        .join(unit, unit.uid == RadReport.uid)
                        .where(RadReport.checked.is_(True))
                        .group_by(RadReport.severity), since, until, unit)
    counts = dict.fromkeys(range(-1, 11), 0)
    for severity, n in session.execute(query):
        counts[int(severity)] = n
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
    """Exams by ``region``, radiologist reports by ``radiologist``, or AI reads (of
    exams and of studies) by ``model``."""
    if column == "model":
        reads = _reads(since, until)
        query = select(reads.c.model, func.count()).group_by(reads.c.model)
        return {str(k or ""): n for k, n in session.execute(query)}
    if column == "region":
        query = select(Exam.region, func.count()).group_by(Exam.region)
    elif column == "radiologist":
        query = (select(RadReport.radiologist, func.count())
                 .join(Exam, Exam.uid == RadReport.uid).group_by(RadReport.radiologist))
    else:
        raise ValueError("column must be region, radiologist or model")
    return {str(k or ""): n for k, n in session.execute(_window(query, since, until))}


def first_reads(session: Session, since: dt.datetime | None = None,
                until: dt.datetime | None = None, *,
                per_study: bool = False) -> list[tuple[dt.datetime, dt.datetime]]:
    """(received, first AI read stored) of each exam, or ``per_study`` study (received:
    its first image), received in the window and read at least once: the first read is
    version 1, whether it is still current or a requeue replaced it."""
    unit: Any = Study if per_study else Exam
    firsts = union_all(
        select(AIReport.uid, AIReport.created).where(AIReport.version == 1),
        select(AIReportVersion.uid, AIReportVersion.created)
        .where(AIReportVersion.version == 1)).subquery()
    query = _window(select(unit.created, firsts.c.created)
                    .join(firsts, firsts.c.uid == unit.uid), since, until, unit)
    return [(received, read) for received, read in session.execute(query)]


def percentile(ordered: list[float], p: float) -> float:
    """The ``p``th percentile (0-100) of sorted values by the nearest rank (a value
    that occurred; pure)."""
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least the first
    return ordered[int(rank) - 1]


def turnaround(pairs: list[tuple[dt.datetime, dt.datetime]]) -> dict[str, dict[str, Any]]:
    """Per UTC day of receipt (YYYY-MM-DD): reads, and the median and 90th percentile
    of the seconds from receipt to the first AI read (pure)."""
    days: dict[str, list[float]] = {}
    for received, read in pairs:
        day = received.astimezone(dt.UTC).date().isoformat()
        days.setdefault(day, []).append(max(0.0, (read - received).total_seconds()))
    result = {}
    for day, seconds in sorted(days.items()):
        seconds.sort()
        result[day] = {"reads": len(seconds), "p50_seconds": percentile(seconds, 50),
                       "p90_seconds": percentile(seconds, 90)}
    return result


def _read_figures(rows: Any) -> tuple[dict[int, int], dict[int, int],
                                      dict[str, tuple[float, int]]]:
    """AI reads by severity, by review verdict, and per endpoint (seconds, reads), from
    rows of (severity, verdict, endpoint, seconds summed, reads)."""
    ai: dict[int, int] = {}
    reviews: dict[int, int] = {}
    latency: dict[str, tuple[float, int]] = {}
    for severity, verdict, endpoint, seconds, n in rows:
        n = int(n or 0)
        ai[int(severity)] = ai.get(int(severity), 0) + n
        reviews[int(verdict)] = reviews.get(int(verdict), 0) + n
        total, count = latency.get(endpoint or "", (0.0, 0))
        latency[endpoint or ""] = (total + float(seconds or 0.0), count + n)
    return ai, reviews, latency


def counted_figures(session: Session, since: dt.datetime | None = None,
                    until: dt.datetime | None = None, *, per_study: bool = False) -> Figures:
    """The global figures of exams and studies received in the window, counted from
    the reports (what the tallies hold, computed afresh; agreement of studies with
    ``per_study``, else of images)."""
    r = _reads(since, until).c
    reads = select(r.severity, r.review_correct, r.endpoint, func.sum(r.latency),
                   func.count()).group_by(r.severity, r.review_correct, r.endpoint)
    ai, reviews, latency = _read_figures(session.execute(reads))
    unit: Any = Study if per_study else Exam
    pairs = (select(AIReport.severity, RadReport.severity, func.count()).select_from(unit)
             .join(AIReport, AIReport.uid == (Study.uid if per_study else Exam.read_uid))
             .join(RadReport, RadReport.uid == unit.uid)
             .where(RadReport.checked.is_(True))
             .group_by(AIReport.severity, RadReport.severity))
    pairs = _window(pairs, since, until, unit)
    return Figures(
        ai=ai, rad=severity_histogram(session, "rad", since, until, per_study=per_study),
        pairs={(int(x), int(y)): n for x, y, n in session.execute(pairs)},
        reviews=reviews, latency=latency)


def tallied_figures(session: Session, first: dt.date | None = None,
                    end: dt.date | None = None, *, per_study: bool = False) -> Figures:
    """The global figures of the days from ``first`` to before ``end`` (None: open),
    summed from the tallies."""
    unit = TALLY_STUDY if per_study else TALLY_IMAGE
    t = Tally
    query = (select(t.kind, t.ai, t.rad, t.review, t.endpoint, func.sum(t.n),
                    func.sum(t.latency))
             .where(t.kind.in_((TALLY_READ, unit)))
             .group_by(t.kind, t.ai, t.rad, t.review, t.endpoint))
    if first is not None:
        query = query.where(t.day >= first)
    if end is not None:
        query = query.where(t.day < end)
    reads = []
    rad: dict[int, int] = {}
    pairs: dict[tuple[int, int], int] = {}
    for kind, ai_sev, rad_sev, verdict, endpoint, n, seconds in session.execute(query):
        if not n:  # (a bucket every unit has left)
            continue
        if kind == TALLY_READ:
            reads.append((ai_sev, verdict, endpoint, seconds, n))
        elif rad_sev != TALLY_NONE:
            rad[rad_sev] = rad.get(rad_sev, 0) + int(n)
            if ai_sev != TALLY_NONE:
                pairs[ai_sev, rad_sev] = pairs.get((ai_sev, rad_sev), 0) + int(n)
    ai, reviews, latency = _read_figures(reads)
    return Figures(ai=ai, rad=rad, pairs=pairs, reviews=reviews, latency=latency)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def whole_days(since: dt.datetime | None,
               until: dt.datetime | None) -> tuple[dt.date | None, dt.date | None] | None:
    """The whole UTC days [first, end) inside the window (None: open), or None when the
    window holds no whole day (pure)."""
    first = end = None
    if since is not None:
        since = since.astimezone(dt.UTC)
        first = since.date() if since == _midnight(since.date()) else \
            since.date() + dt.timedelta(days=1)
    if until is not None:
        end = until.astimezone(dt.UTC).date()
    if first is not None and end is not None and first >= end:
        return None
    return first, end


def figures(session: Session, since: dt.datetime | None = None,
            until: dt.datetime | None = None, *, per_study: bool = False) -> Figures:
    """The global figures of the window: whole days from the tallies (a few hundred rows
    a day), the parts of days at its edges counted from the reports."""
    days = whole_days(since, until)
    if days is None:
        return counted_figures(session, since, until, per_study=per_study)
    first, end = days
    total = tallied_figures(session, first, end, per_study=per_study)
    if since is not None and first is not None and since < _midnight(first):
        total += counted_figures(session, since, _midnight(first), per_study=per_study)
    if until is not None and end is not None and until > _midnight(end):
        total += counted_figures(session, _midnight(end), until, per_study=per_study)
    return total
