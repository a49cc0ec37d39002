"""The statistics' running tallies agree with the reports they count, after every kind of
write (reads of studies and of images, new versions, reviews, radiologist reports and
their links, purges), for whole days and for windows with partial days at their edges."""

import datetime as dt
import random
import time

import pytest
from sqlalchemy import select, update

from support import records
from xrayvision.agreement import Confusion, Figures
from xrayvision.db import repo, stats
from xrayvision.db.models import ERROR, QUEUED, Exam, Study, Tally
from xrayvision.db.repo import ExamInfo
from xrayvision.db.repo.tallies import Fact, moves, restate_tallies

DAY0 = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
WINDOWS = [
    (None, None),
    (DAY0, None),
    (None, DAY0 + dt.timedelta(days=2)),
    (DAY0 + dt.timedelta(hours=13), None),  # a partial first day
    (DAY0 + dt.timedelta(hours=6), DAY0 + dt.timedelta(days=2, hours=9)),  # both edges
    (DAY0 + dt.timedelta(hours=1), DAY0 + dt.timedelta(hours=20)),  # inside one day
    (DAY0 + dt.timedelta(days=9), None),  # nothing
]


def summary(f: Figures, threshold: int = 5):
    """What the API shows of the figures (zero counts and sums dropped)."""
    return (f.severity("ai"), f.severity("rad"), {k: v for k, v in f.pairs.items() if v},
            f.confusion(threshold), f.review_counts(), f.model())


def assert_tallies_agree(db):
    def check(session):
        for per_study in (True, False):
            for since, until in WINDOWS:
                tallied = stats.figures(session, since, until, per_study=per_study)
                counted = stats.counted_figures(session, since, until, per_study=per_study)
                assert summary(tallied) == summary(counted), (per_study, since, until)
        # nothing left counted below zero
        assert (session.scalar(select(Tally.n).order_by(Tally.n).limit(1)) or 0) >= 0
    db.read_sync(check)


def received(db, uid, at):
    """Backdates an image (and the study it starts) to ``at``, before any report."""
    def write(session):
        session.execute(update(Exam).where(Exam.uid == uid).values(created=at))
        session.execute(update(Study).where(Study.uid == repo.study_key(
            session.get(Exam, uid).study_uid, uid)).values(created=at))
    db.write_sync(write)


def image(db, uid, study, at, status=QUEUED):
    db.write_sync(records.add_converted, ExamInfo(uid=uid, study_uid=study, region="chest",
                                                  status=status))
    received(db, uid, at)


def test_every_write_keeps_the_tallies_true(db):
    # three days; a study of two images, one of one image, an image without a study UID
    image(db, "1.1.1", "2.1", DAY0 + dt.timedelta(hours=3))
    image(db, "1.1.2", "2.1", DAY0 + dt.timedelta(hours=3, minutes=1))
    image(db, "1.2.1", "2.2", DAY0 + dt.timedelta(days=1, hours=12))
    image(db, "1.3", "", DAY0 + dt.timedelta(days=2, hours=10))
    image(db, "1.4", "2.4", DAY0 + dt.timedelta(days=2, hours=11), status=ERROR)
    assert_tallies_agree(db)

    db.write_sync(repo.save_study_read, "2.1", ["1.1.1", "1.1.2"], threshold=5, severity=7,
                  endpoint="primary", latency=1.5)
    db.write_sync(repo.save_ai_read, "1.2.1", threshold=5, severity=2, endpoint="secondary",
                  latency=3.0)
    db.write_sync(repo.save_study_read, "1.3", ["1.3"], threshold=5, severity=-1,
                  endpoint="primary", latency=0.5)
    db.write_sync(repo.save_ai_read, "1.4", threshold=5, severity=9, endpoint="primary",
                  latency=2.0)
    assert_tallies_agree(db)
    figures = db.read_sync(stats.figures)
    assert figures.severity("ai")[7] == 1 and figures.model()["primary"]["reports"] == 3

    # a radiologist report of an image, unchecked, then checked, then linked to the study
    db.write_sync(repo.save_rad_report, "1.1.1", severity=8, radiologist="Dr. A",
                  checked=False)
    assert_tallies_agree(db)
    db.write_sync(repo.save_rad_report, "1.1.1", severity=8, checked=True)
    db.write_sync(repo.link_rad_report, "1.1.1", "2.1")
    db.write_sync(repo.save_rad_report, "1.2.1", severity=1, checked=True)
    db.write_sync(repo.link_rad_report, "1.2.1", "2.2")
    assert_tallies_agree(db)
    assert db.read_sync(stats.figures, per_study=True).confusion(5).tp == 1

    # a new version of the study read, reviews, a changed verdict, an amended report
    db.write_sync(repo.save_study_read, "2.1", ["1.1.1", "1.1.2"], threshold=5, severity=3,
                  endpoint="secondary", latency=4.0)
    db.write_sync(repo.review_ai_report, "1.1.2", correct=False, note="", username="r")
    db.write_sync(repo.review_ai_report, "1.2.1", correct=True, note="", username="r")
    db.write_sync(repo.review_ai_report, "1.2.1", correct=False, note="", username="r")
    db.write_sync(repo.save_rad_report, "2.1", severity=2, checked=True)
    assert_tallies_agree(db)
    per_study = db.read_sync(stats.figures, per_study=True)
    # (study 2.2 was read per image: no study read to compare with its report)
    assert per_study.confusion(5) == Confusion(tn=1)
    assert per_study.review_counts()["incorrect"] == 2

    # an error image is purged with its radiologist report: it counts no more; the one
    # with an AI read of its own is kept, read and all
    image(db, "1.5", "2.5", DAY0 + dt.timedelta(days=1, hours=2), status=ERROR)
    db.write_sync(repo.save_rad_report, "1.5", severity=10, checked=True)
    assert db.read_sync(stats.figures).severity("rad")[10] == 1
    db.write_sync(repo.purge_error_exams, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert_tallies_agree(db)
    figures = db.read_sync(stats.figures)
    assert figures.severity("rad")[10] == 0 and figures.severity("ai")[9] == 1


def test_random_writes_keep_the_tallies_true(db):
    """A seeded random walk over the writes the runtime makes, checked after each."""
    rnd = random.Random(11)
    studies: dict[str, list[str]] = {}
    for s in range(6):
        study = f"2.{s}"
        at = DAY0 + dt.timedelta(hours=rnd.randrange(72))
        for n in range(rnd.randint(1, 3)):
            uid = f"1.{s}.{n}"
            image(db, uid, study, at + dt.timedelta(minutes=n))
            studies.setdefault(study, []).append(uid)
    for _ in range(30):
        study = rnd.choice(sorted(studies))
        uid = rnd.choice(studies[study])
        op = rnd.randrange(5)
        if op == 0:
            db.write_sync(repo.save_study_read, study, studies[study], threshold=5,
                          severity=rnd.randrange(-1, 11), endpoint=rnd.choice(("primary", "")),
                          latency=rnd.random() * 3)
        elif op == 1:
            db.write_sync(repo.save_ai_read, uid, threshold=5, severity=rnd.randrange(-1, 11),
                          endpoint="secondary", latency=rnd.random())
        elif op == 2:
            db.write_sync(repo.review_ai_report, uid, correct=rnd.random() < 0.5, note="",
                          username="r")
        elif op == 3:
            db.write_sync(repo.save_rad_report, uid, severity=rnd.randrange(-1, 11),
                          checked=rnd.random() < 0.8)
        else:
            db.write_sync(repo.link_rad_report, uid, study)
        assert_tallies_agree(db)


def test_restate_is_idempotent_and_moves_nothing_unchanged(db):
    image(db, "1.1", "2.1", DAY0)
    db.write_sync(repo.save_study_read, "2.1", ["1.1"], threshold=5, severity=4)
    assert db.write_sync(restate_tallies, ["2.1", "1.1", "9.9", ""]) == 0


def test_moves_are_pure_bucket_arithmetic():
    day = dt.date(2026, 11, 28)
    old = {("read", "a"): Fact(day, ai=3, latency=1.0), ("read", "b"): Fact(day, ai=3)}
    new = {("read", "a"): Fact(day, ai=8, latency=1.0), ("read", "b"): Fact(day, ai=3),
           ("study", "c"): Fact(day, ai=8, rad=9)}
    assert moves(old, new) == {
        (day, "read", 3, -2, -1, ""): (-1, -1.0),
        (day, "read", 8, -2, -1, ""): (1, 1.0),
        (day, "study", 8, 9, -1, ""): (1, 0.0),
    }
    assert moves(new, new) == {}


@pytest.mark.parametrize("since,until,days", [
    (None, None, (None, None)),
    (DAY0, DAY0 + dt.timedelta(days=2), (DAY0.date(), (DAY0 + dt.timedelta(days=2)).date())),
    (DAY0 + dt.timedelta(seconds=1), None, ((DAY0 + dt.timedelta(days=1)).date(), None)),
    (DAY0 + dt.timedelta(hours=1), DAY0 + dt.timedelta(hours=30), None),
    # a window given in another time zone: its UTC days
    (dt.datetime(2026, 11, 28, 2, tzinfo=dt.timezone(dt.timedelta(hours=2))), None,
     (DAY0.date(), None)),
])
def test_whole_days_of_a_window(since, until, days):
    assert stats.whole_days(since, until) == days


def test_parallel_writers_share_buckets_without_deadlock(pg_db):
    """Eight writers on PostgreSQL move studies between the same two buckets in opposite
    directions at once (one order for every writer): no deadlock, nothing miscounted."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    db = pg_db
    keys = [f"2.{i}" for i in range(16)]
    for i, key in enumerate(keys):
        image(db, f"1.{i}", key, DAY0)
        db.write_sync(repo.save_study_read, key, [f"1.{i}"], threshold=5,
                      severity=3 if i % 2 else 8)

    def deadlocks():
        return db.read_sync(lambda s: s.execute(text(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"))
            .scalar())

    before = deadlocks()

    def flip(i):
        for round_ in range(6):
            severity = 8 if (i + round_) % 2 else 3
            db.write_sync(repo.save_study_read, keys[i], [f"1.{i}"], threshold=5,
                          severity=severity)
            db.write_sync(repo.review_ai_report, keys[i], correct=bool(round_ % 2), note="",
                          username="r")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(flip, range(16)))
    time.sleep(1.5)  # (a backend reports its counters within a second of going idle)
    assert deadlocks() == before
    assert_tallies_agree(db)
    figures = db.read_sync(stats.tallied_figures, per_study=True)
    assert sum(figures.ai.values()) == 16 and figures.review_counts()["correct"] == 16
