"""SQL aggregates of AI/radiologist agreement, checked against hand-computed matrices."""

import datetime as dt

import pytest
from sqlalchemy import text, update

from support import records
from xrayvision.agreement import Confusion, roll_up
from xrayvision.db import repo, stats
from xrayvision.db.models import DONE, Exam, utcnow
from xrayvision.db.repo import ExamInfo

# (uid, region, radiologist, received, ai severity, rad severity)
ROWS = [
    ("1", "chest", "Dr. A", "2026-11-02T08:00", 8, 7),   # TP
    ("2", "chest", "Dr. A", "2026-11-02T23:30", 2, 1),   # TN
    ("3", "chest", "Dr. B", "2026-11-03T10:00", 6, 2),   # FP
    ("4", "chest", "Dr. B", "2026-11-09T10:00", 3, 9),   # FN
    ("5", "leg", "Dr. A", "2026-11-09T11:00", -1, 6),    # not assessed (AI)
    ("6", "leg", "Dr. B", "2026-11-30T12:00", 5, 5),     # TP (at the threshold)
    ("7", "leg", "Dr. B", "2026-12-01T00:30", 4, -1),    # not assessed (radiologist)
    ("8", "leg", "Dr. A", "2026-12-01T09:00", 0, 0),     # TN
]


def load(db, unchecked_uid=None):
    for uid, region, rad_name, received, ai, rad in ROWS:
        db.write_sync(records.add_exam, ExamInfo(uid=uid, region=region, status=DONE))
        when = dt.datetime.fromisoformat(received).replace(tzinfo=dt.UTC)
        db.write_sync(lambda s, uid=uid, when=when: s.execute(
            update(Exam).where(Exam.uid == uid).values(created=when)))
        db.write_sync(records.save_ai_report, uid, severity=ai)
        db.write_sync(repo.save_rad_report, uid, severity=rad, radiologist=rad_name,
                      checked=uid != unchecked_uid)


def test_overall_region_radiologist(db):
    load(db)
    counts = db.read_sync(repo.agreement_counts, 5)
    assert counts == {"": Confusion(tp=2, tn=2, fp=1, fn=1, not_assessed=2)}
    assert db.read_sync(repo.agreement_counts, 5, "region") == {
        "chest": Confusion(tp=1, tn=1, fp=1, fn=1),
        "leg": Confusion(tp=1, tn=1, not_assessed=2),
    }
    assert db.read_sync(repo.agreement_counts, 5, "radiologist") == {
        "Dr. A": Confusion(tp=1, tn=2, not_assessed=1),
        "Dr. B": Confusion(tp=1, fp=1, fn=1, not_assessed=1),
    }
    # A higher threshold moves exam 6 (5/5) to TN and exam 1 (8/7) stays TP.
    assert db.read_sync(repo.agreement_counts, 6)[""] == Confusion(tp=1, tn=3, fp=1, fn=1,
                                                                    not_assessed=2)


def days_in_bucharest_session(session):
    """Days counted by a PostgreSQL session in another time zone: still UTC days."""
    if session.bind.dialect.name == "postgresql":
        session.execute(text("SET LOCAL TIME ZONE 'Europe/Bucharest'"))
    return repo.agreement_counts(session, 5, "day")


def test_days_weeks_months_in_utc(db):
    load(db)
    days = db.read_sync(days_in_bucharest_session)
    assert days == {
        "2026-11-02": Confusion(tp=1, tn=1), "2026-11-03": Confusion(fp=1),
        "2026-11-09": Confusion(fn=1, not_assessed=1), "2026-11-30": Confusion(tp=1),
        "2026-12-01": Confusion(tn=1, not_assessed=1),
    }
    assert roll_up(days, "week") == {
        "2026-11-02": Confusion(tp=1, tn=1, fp=1), "2026-11-09": Confusion(fn=1, not_assessed=1),
        "2026-11-30": Confusion(tp=1, tn=1, not_assessed=1),
    }
    assert roll_up(days, "month") == {
        "2026-11-01": Confusion(tp=2, tn=1, fp=1, fn=1, not_assessed=1),
        "2026-12-01": Confusion(tn=1, not_assessed=1),
    }


def test_date_range_and_unchecked_reports_are_left_out(db):
    load(db, unchecked_uid="1")
    since = dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
    until = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert db.read_sync(repo.agreement_counts, 5, "all", since, until) == {
        "": Confusion(tp=1, fp=1, fn=1, not_assessed=1)}
    assert db.read_sync(repo.agreement_counts, 5)[""].tp == 1  # exam 1 waits for CHK


def test_unknown_group_is_refused(db):
    with pytest.raises(ValueError, match="group must be one of"):
        db.read_sync(repo.agreement_counts, 5, "week")


def test_per_study_compares_the_studys_read_with_its_report(db):
    """Two studies of two images each: per study each counts once (the study's AI read
    against the study's report), per image each image counts."""
    for study, severity, rad in (("2.1", 8, 7), ("2.2", 2, 9)):  # TP, FN
        for i in (1, 2):
            uid = f"{study}.{i}"

            def receive(session, uid=uid, study=study):
                records.add_exam(session, ExamInfo(uid=uid, study_uid=study, region="chest"))
                repo.finish_conversion(session, uid, "queued")
                repo.refresh_study(session, study, uid, became_readable=True,
                                   read_per_study=True, quiet=0, threshold=5)
            db.write_sync(receive)
            db.write_sync(repo.save_rad_report, uid, severity=rad, radiologist="Dr. A",
                          checked=True)
            db.write_sync(repo.link_rad_report, uid, study)
        db.write_sync(repo.save_study_read, study, [f"{study}.1", f"{study}.2"],
                      threshold=5, severity=severity)
    studies = db.read_sync(repo.agreement_counts, 5, "region", per_study=True)
    assert studies == {"chest": Confusion(tp=1, fn=1)}
    images = db.read_sync(repo.agreement_counts, 5, "region")
    assert images == {"chest": Confusion(tp=2, fn=2)}
    # the severity histograms count the same units: studies' reads and reports
    rad = db.read_sync(stats.severity_histogram, "rad", per_study=True)
    assert (rad[7], rad[9]) == (1, 1)
    assert db.read_sync(stats.severity_histogram, "rad")[7] == 2  # per image
    ai = db.read_sync(stats.severity_histogram, "ai")
    assert (ai[8], ai[2]) == (1, 1)
    window = db.read_sync(stats.severity_histogram, "ai", utcnow() - dt.timedelta(hours=1))
    assert window == ai
