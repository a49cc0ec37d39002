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
import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    delete,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
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


def _facts_statement() -> Any:
    """The values of the units that keys may name, one UNION ALL (one round trip):
    (kind, uid, unit received, study received, AI severity, verdict, endpoint,
    latency, radiologist severity) of the AI reads and studies of the keys, of the
    images of those UIDs and of the images whose read is one of them."""
    keys: Any = bindparam("keys", expanding=True)
    a, r = AIReport, RadReport
    checked = r.checked.is_(True)

    def kind(name: str) -> Any:
        return literal_column(f"'{name}'")

    # a unit's (verdict, endpoint, latency) are a read's only
    not_a_read: Any = (literal_column("-1"), literal_column("''"), literal_column("0.0"))
    reads: Any = (
        select(kind(TALLY_READ), a.uid, Exam.created, Study.created, a.severity,
               a.review_correct, a.endpoint, a.latency, null())
        .select_from(a).outerjoin(Exam, Exam.uid == a.uid)
        .outerjoin(Study, Study.uid == a.uid).where(a.uid.in_(keys)))
    studies: Any = (
        select(kind(TALLY_STUDY), Study.uid, Study.created, null(), a.severity,
               *not_a_read, r.severity)
        .select_from(Study).outerjoin(a, a.uid == Study.uid)
        .outerjoin(r, and_(r.uid == Study.uid, checked)).where(Study.uid.in_(keys)))
    images: Any = (
        select(kind(TALLY_IMAGE), Exam.uid, Exam.created, null(), a.severity,
               *not_a_read, r.severity)
        .select_from(Exam).outerjoin(a, a.uid == Exam.read_uid)
        .outerjoin(r, and_(r.uid == Exam.uid, checked))
        # (the images a read covers by indexed columns: their own UID or their study's)
        .where(or_(Exam.uid.in_(keys),
                   and_(Exam.study_uid.in_(keys), Exam.read_uid.in_(keys)))))
    return union_all(reads, studies, images)


def _stored_statement() -> Any:
    f = TallyFact
    return (select(f.kind, f.uid, f.day, f.ai, f.rad, f.review, f.endpoint, f.latency)
            .where(f.uid.in_(bindparam("uids", expanding=True))))


# Built once (module import): they run with every read, review and report.
_FACTS = _facts_statement()
_STORED = _stored_statement()
_FORGET = delete(TallyFact).where(TallyFact.kind == bindparam("b_kind"),
                                  TallyFact.uid == bindparam("b_uid"))


def current_facts(session: Session,
                  keys: list[str]) -> tuple[dict[tuple[str, str], Fact], set[str]]:
    """The facts of every unit ``keys`` may name, from the reports as they are now (see
    ``_facts_statement``), and every image UID found (with facts or not). Units with
    nothing to count are absent."""
    facts: dict[tuple[str, str], Fact] = {}
    images: set[str] = set()
    rows = session.connection().execute(_FACTS, {"keys": keys})
    for kind, uid, received, study_received, ai, review, endpoint, latency, rad in rows:
        if kind == TALLY_READ:
            facts[kind, uid] = Fact(_day(received, study_received), ai=int(ai),
                                    review=int(review), endpoint=endpoint or "",
                                    latency=float(latency or 0.0))
            continue
        if kind == TALLY_IMAGE:
            images.add(uid)
        if ai is not None or rad is not None:
            facts[kind, uid] = Fact(_day(received), ai=_sev(ai), rad=_sev(rad))
    return facts, images


def _stored_facts(session: Session, uids: list[str]) -> dict[tuple[str, str], Fact]:
    rows = session.connection().execute(_STORED, {"uids": uids})
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
_FACT_COLUMNS = ("kind", "uid", "day", "ai", "rad", "review", "endpoint", "latency")


@functools.lru_cache(maxsize=4)
def _upserts(dialect: str) -> tuple[Any, Any]:
    """(add to a bucket, store a unit's facts) for the dialect, built once."""
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert

    def params(model: Any, columns: tuple[str, ...]) -> dict[str, Any]:
        return {c: bindparam(c, type_=model.__table__.c[c].type) for c in columns}

    add = insert(Tally).values(params(Tally, (*_BUCKET, "n", "latency")))
    add = add.on_conflict_do_update(
        index_elements=list(_BUCKET),
        set_={"n": Tally.n + add.excluded.n, "latency": Tally.latency + add.excluded.latency})
    store = insert(TallyFact).values(params(TallyFact, _FACT_COLUMNS))
    store = store.on_conflict_do_update(
        index_elements=["kind", "uid"], set_={c: store.excluded[c] for c in _FACT_COLUMNS[2:]})
    return add, store


def restate_tallies(session: Session, keys: Iterable[str]) -> int:
    """Brings the tallies of every unit ``keys`` name (AI read keys, study keys, image
    UIDs: see :func:`current_facts`) up to date with their reports, in the caller's
    transaction; call it after the write. Returns how many units changed. Two reads,
    and one or two writes when something changed."""
    names = sorted({k for k in keys if k})
    if not names:
        return 0
    new, images = current_facts(session, names)
    # (only units the current facts cover: an image's UID also keys its own earlier read)
    old = {(kind, uid): fact
           for (kind, uid), fact in _stored_facts(session, sorted(set(names) | images)).items()
           if kind == TALLY_IMAGE or uid in names}
    changed = sorted(u for u in old.keys() | new.keys() if old.get(u) != new.get(u))
    if not changed:
        return 0
    add, store = _upserts(session.get_bind().dialect.name)
    conn = session.connection()
    # one order for every writer: two transactions never wait on each other's buckets
    deltas = [{**dict(zip(_BUCKET, bucket, strict=True)), "n": n, "latency": seconds}
              for bucket, (n, seconds) in sorted(moves(old, new).items())]
    if deltas:
        conn.execute(add, deltas)
    gone = [{"b_kind": kind, "b_uid": uid} for kind, uid in changed if (kind, uid) not in new]
    if gone:
        conn.execute(_FORGET, gone)
    present = [{"kind": kind, "uid": uid, **vars(new[kind, uid])}
               for kind, uid in changed if (kind, uid) in new]
    if present:
        conn.execute(store, present)
    return len(changed)
