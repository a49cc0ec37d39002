"""The running counts behind the global statistics (``tallies``), kept as reports change.

Three kinds of unit are counted, each on the UTC day it was received:

- ``read``: every current AI read (severity, review verdict, endpoint, latency), on the
  day its exam or study was received;
- ``study``: every study with an AI read or a checked radiologist report of its own
  (the pair of severities agreement compares when reads are per study);
- ``image``: every image with either (its read: ``exams.read_uid``; its own report),
  the pair compared when reads are per image.

A unit's row in ``tally_facts`` says what it adds now. :func:`restate_tallies` runs in
the transaction of each write that may change that (a read, a review, a radiologist
report or its link to the study, a purge): it recomputes the named units from the
reports, and a unit whose values changed leaves its old bucket for its new one. Nothing
is counted twice or lost whichever order writes commit in: each transaction moves only
the units it changed, and buckets are updated in one sorted order (no deadlock between
two writers on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from xrayvision.db.models import (
    TALLY_IMAGE,
    TALLY_NONE,
    TALLY_READ,
    TALLY_STUDY,
    AIReport,
    Exam,
    RadReport,
    Study,
    Tally,
    TallyFact,
)

# A read whose exam or study is gone (never in a dated window).
UNKNOWN_DAY = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class Fact:
    """What one unit adds: one to the bucket of these values, ``latency`` to its sum."""

    day: dt.date
    ai: int = TALLY_NONE
    rad: int = TALLY_NONE
    review: int = -1
    endpoint: str = ""
    latency: float = 0.0

    def bucket(self, kind: str) -> tuple[Any, ...]:
        return (self.day, kind, self.ai, self.rad, self.review, self.endpoint)


def _day(*received: dt.datetime | None) -> dt.date:
    for value in received:
        if value is not None:
            return value.astimezone(dt.UTC).date()
    return UNKNOWN_DAY


def _sev(value: int | None) -> int:
    return TALLY_NONE if value is None else int(value)


def current_facts(session: Session, keys: list[str]) -> dict[tuple[str, str], Fact]:
    """The facts of every unit ``keys`` may name, from the reports as they are now:
    the AI reads and studies of those keys, the images of those UIDs and the images
    whose read is one of them. Units with nothing to count are absent."""
    facts: dict[tuple[str, str], Fact] = {}
    reads = session.execute(
        select(AIReport.uid, AIReport.severity, AIReport.review_correct, AIReport.endpoint,
               AIReport.latency, Exam.created, Study.created)
        .outerjoin(Exam, Exam.uid == AIReport.uid).outerjoin(Study, Study.uid == AIReport.uid)
        .where(AIReport.uid.in_(keys)))
    for uid, severity, review, endpoint, latency, exam_at, study_at in reads:
        facts[TALLY_READ, uid] = Fact(_day(exam_at, study_at), ai=int(severity),
                                      review=int(review), endpoint=endpoint or "",
                                      latency=float(latency or 0.0))
    checked = RadReport.checked.is_(True)
    studies = session.execute(
        select(Study.uid, Study.created, AIReport.severity, RadReport.severity)
        .outerjoin(AIReport, AIReport.uid == Study.uid)
        .outerjoin(RadReport, and_(RadReport.uid == Study.uid, checked))
        .where(Study.uid.in_(keys)))
    images = session.execute(
        select(Exam.uid, Exam.created, AIReport.severity, RadReport.severity)
        .outerjoin(AIReport, AIReport.uid == Exam.read_uid)
        .outerjoin(RadReport, and_(RadReport.uid == Exam.uid, checked))
        # (the images a read covers by indexed columns: their own UID or their study's)
        .where(or_(Exam.uid.in_(keys),
                   and_(Exam.study_uid.in_(keys), Exam.read_uid.in_(keys)))))
    for kind, rows in ((TALLY_STUDY, studies), (TALLY_IMAGE, images)):
        for uid, created, ai, rad in rows:
            if ai is not None or rad is not None:
                facts[kind, uid] = Fact(_day(created), ai=_sev(ai), rad=_sev(rad))
    return facts


def _stored_facts(session: Session, units: set[tuple[str, str]]) -> dict[tuple[str, str], Fact]:
    if not units:
        return {}
    f = TallyFact
    rows = session.execute(
        select(f.kind, f.uid, f.day, f.ai, f.rad, f.review, f.endpoint, f.latency)
        .where(tuple_(f.kind, f.uid).in_(sorted(units))))
    return {(kind, uid): Fact(day, ai, rad, review, endpoint, latency)
            for kind, uid, day, ai, rad, review, endpoint, latency in rows}


def moves(old: dict[tuple[str, str], Fact],
          new: dict[tuple[str, str], Fact]) -> dict[tuple[Any, ...], tuple[int, float]]:
    """Bucket -> (count, latency) to add for units going from ``old`` to ``new`` facts;
    buckets whose changes cancel out are left out (pure)."""
    count: Counter[tuple[Any, ...]] = Counter()
    latency: dict[tuple[Any, ...], float] = {}
    for unit in old.keys() | new.keys():
        before, after = old.get(unit), new.get(unit)
        if before == after:
            continue
        for fact, sign in ((before, -1), (after, 1)):
            if fact is not None:
                key = fact.bucket(unit[0])
                count[key] += sign
                latency[key] = latency.get(key, 0.0) + sign * fact.latency
    return {b: (count[b], latency.get(b, 0.0)) for b in count.keys() | latency.keys()
            if count[b] or latency.get(b)}


_BUCKET = ("day", "kind", "ai", "rad", "review", "endpoint")


def _params(model: Any, columns: tuple[str, ...]) -> dict[str, Any]:
    table = model.__table__
    return {c: bindparam(c, type_=table.c[c].type) for c in columns}


def restate_tallies(session: Session, keys: Iterable[str]) -> int:
    """Brings the tallies of every unit ``keys`` name (AI read keys, study keys, image
    UIDs: see :func:`current_facts`) up to date with their reports, in the caller's
    transaction; call it after the write. Returns how many units changed."""
    names = sorted({k for k in keys if k})
    if not names:
        return 0
    new = current_facts(session, names)
    units = set(new) | {(kind, uid) for uid in names
                        for kind in (TALLY_READ, TALLY_STUDY, TALLY_IMAGE)}
    old = _stored_facts(session, units)
    changed = sorted(u for u in old.keys() | new.keys() if old.get(u) != new.get(u))
    if not changed:
        return 0
    insert: Any = (postgresql.insert if session.get_bind().dialect.name == "postgresql"
                   else sqlite.insert)
    deltas = moves(old, new)
    if deltas:
        stmt = insert(Tally).values(_params(Tally, (*_BUCKET, "n", "latency")))
        stmt = stmt.on_conflict_do_update(
            index_elements=list(_BUCKET),
            set_={"n": Tally.n + stmt.excluded.n,
                  "latency": Tally.latency + stmt.excluded.latency})
        # one order for every writer: two transactions never wait on each other's buckets
        session.connection().execute(stmt, [
            {**dict(zip(_BUCKET, bucket, strict=True)), "n": n, "latency": seconds}
            for bucket, (n, seconds) in sorted(deltas.items())])
    gone = [u for u in changed if u not in new]
    if gone:
        session.connection().execute(delete(TallyFact).where(
            tuple_(TallyFact.kind, TallyFact.uid).in_(gone)))
    present = [u for u in changed if u in new]
    if present:
        stmt = insert(TallyFact).values(_params(TallyFact, (
            "kind", "uid", "day", "ai", "rad", "review", "endpoint", "latency")))
        stmt = stmt.on_conflict_do_update(
            index_elements=["kind", "uid"],
            set_={c: stmt.excluded[c] for c in ("day", "ai", "rad", "review", "endpoint",
                                                "latency")})
        session.connection().execute(stmt, [
            {"kind": kind, "uid": uid, **vars(new[kind, uid])} for kind, uid in present])
    return len(changed)
