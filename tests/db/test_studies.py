"""Studies (``db/repo/studies.py``): the rollup and the read-queue state as pure
functions, then refreshed, claimed, read, reviewed and requeued on both backends."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from support import records
from xrayvision.db import queue, repo
from xrayvision.db.models import (
    DONE,
    IGNORE,
    NONE,
    PROCESSING,
    QUEUED,
    AIReport,
    AIReportVersion,
    Exam,
    Study,
    utcnow,
)
from xrayvision.db.repo import ExamInfo
from xrayvision.db.repo.studies import ImageFacts, next_state, rollup

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def facts(uid: str, status: str = QUEUED, *, region: str = "chest", projection: str = "PA",
          priority: int = 0, seconds: int = 0, **kw) -> ImageFacts:
    values = {"cnp": "1800101123456", "accession": "A1", "modality": "DX",
              "study_description": "XR CHEST", "calling_aet": "CR1", "series_datetime": None,
              "error": "", "reason_code": "", **kw}
    return ImageFacts(uid=uid, region=region, projection=projection, priority=priority,
                      status=status, created=T0 + dt.timedelta(seconds=seconds), **values)


# --- pure ------------------------------------------------------------------------------


def test_rollup_of_a_two_view_chest_study():
    roll = rollup([facts("1.2", projection="LATERAL", seconds=5, priority=1),
                   facts("1.1", projection="PA"),
                   facts("1.3", IGNORE, region="", projection="", seconds=9)])
    assert (roll["regions"], roll["views"], roll["images"], roll["readable"]) == (
        "chest", "PA,LATERAL", 3, 2)
    assert roll["priority"] == 1 and roll["unread_status"] == QUEUED
    assert roll["created"] == T0 and roll["last_image"] == T0 + dt.timedelta(seconds=9)


def test_rollup_without_a_readable_image_says_why():
    ignored = rollup([facts("1.1", IGNORE, region="", error="no rule: NECK",
                            reason_code="no_region_rule")])
    assert (ignored["unread_status"], ignored["reason_code"], ignored["error"]) == (
        IGNORE, "no_region_rule", "no rule: NECK")
    mixed = rollup([facts("1.1", IGNORE, region=""),
                    facts("1.2", "error", reason_code="decode_failed", error="bad pixels")])
    assert (mixed["unread_status"], mixed["reason_code"]) == ("error", "decode_failed")
    converting = rollup([facts("1.1", IGNORE), facts("1.2", NONE)])
    assert converting["unread_status"] == NONE


def test_next_state_quiet_time_urgent_bypass_and_late_images():
    roll = rollup([facts("1.1")])
    now = T0
    new = next_state(None, roll, became_readable=True, read_per_study=True, quiet=10, now=now)
    assert new["status"] == QUEUED and new["not_before"] == now + dt.timedelta(seconds=10)
    urgent = rollup([facts("1.1", priority=1)])
    assert next_state(None, urgent, became_readable=True, read_per_study=True, quiet=10,
                      now=now)["not_before"] is None
    # a second image while queued pushes the quiet time on; the status stays
    later = now + dt.timedelta(seconds=4)
    assert next_state(QUEUED, roll, became_readable=True, read_per_study=True, quiet=10,
                      now=later) == {"not_before": later + dt.timedelta(seconds=10)}
    # during the read: pending (read again after); after it: a new read
    assert next_state(PROCESSING, roll, became_readable=True, read_per_study=True, quiet=10,
                      now=later)["pending"] is True
    assert next_state(DONE, roll, became_readable=True, read_per_study=True, quiet=10,
                      now=later)["status"] == QUEUED
    # an ignored late image changes nothing of a study that was read
    assert next_state(DONE, roll, became_readable=False, read_per_study=True, quiet=10,
                      now=later) == {}
    # read per image: the study only rolls up
    assert next_state(None, roll, became_readable=True, read_per_study=False, quiet=10,
                      now=now)["status"] == DONE


# --- on the database ---------------------------------------------------------------------


def receive(db, uid: str, study: str, *, projection: str = "PA", priority: int = 0,
            region: str = "chest", status: str = QUEUED, quiet: float = 10,
            per_study: bool = True, now: dt.datetime | None = None) -> str:
    """An instance recorded and converted as ingest does it: the row, then its
    conversion's end with the study's refresh in one transaction."""
    def write(session):
        records.add_exam(session, ExamInfo(uid=uid, study_uid=study, region=region,
                                           projection=projection, priority=priority,
                                           accession="A1", modality="DX"))
        repo.finish_conversion(session, uid, status,
                               "no rule" if status == IGNORE else "",
                               "no_region_rule" if status == IGNORE else "")
        return repo.refresh_study(session, study, uid, became_readable=status == QUEUED,
                                  read_per_study=per_study, quiet=quiet, threshold=5, now=now)
    return db.write_sync(write)


def study(db, key: str) -> Study:
    return db.read_sync(lambda s: s.get(Study, key, populate_existing=True))


def test_a_study_waits_for_its_quiet_time_then_is_claimed_once(db):
    now = utcnow()
    receive(db, "1.1", "2.9", now=now)
    receive(db, "1.2", "2.9", projection="LATERAL", now=now)
    s = study(db, "2.9")
    assert (s.status, s.images, s.readable, s.views) == (QUEUED, 2, 2, "PA,LATERAL")
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES) is None  # quiet time
    due = db.read_sync(queue.next_due, table=queue.STUDIES)
    assert due is not None and abs((due - now).total_seconds() - 10) < 1
    later = now + dt.timedelta(seconds=11)
    claimed = db.write_sync(queue.claim, "w", 60, later, table=queue.STUDIES)
    assert claimed.uid == "2.9"
    assert db.write_sync(queue.claim, "w", 60, later, table=queue.STUDIES) is None
    context = db.read_sync(repo.study_context, "2.9")
    assert [i.uid for i in context.images] == ["1.1", "1.2"] and context.regions == "chest"


def test_a_stat_study_is_claimed_at_once(db):
    receive(db, "1.1", "2.1")  # routine, quiet
    receive(db, "1.5", "2.5", priority=3)  # stat: no quiet time, and first
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "2.5"
    assert study(db, "2.5").triage == 1  # critical before any read


def test_a_study_read_covers_its_images_and_is_versioned_and_reviewed(db):
    receive(db, "1.1", "2.1", quiet=0)
    receive(db, "1.2", "2.1", projection="LATERAL", quiet=0)
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "2.1"

    def read(session, severity):
        repo.save_study_read(session, "2.1", ["1.1", "1.2"], threshold=5, text="r",
                             severity=severity, positive=1, model="m", endpoint="primary")
        queue.complete(session, "2.1", "w", table=queue.STUDIES)

    db.write_sync(read, 8)
    s = study(db, "2.1")
    assert (s.status, s.severity, s.triage) == (DONE, 8, 1)
    images = db.read_sync(lambda se: se.scalars(select(Exam).order_by(Exam.uid)).all())
    assert [(e.status, e.read_uid, e.severity, e.triage) for e in images] == [
        (DONE, "2.1", 8, 1), (DONE, "2.1", 8, 1)]
    # an image's page finds the study's read; a review of it is the study's
    row = db.read_sync(repo.get_exam, "1.2")
    assert row.ai is not None and row.ai.uid == "2.1" and row.ai.severity == 8
    assert db.write_sync(repo.review_ai_report, "1.2", correct=True, note="",
                         username="dr") == 1
    assert study(db, "2.1").triage == 0
    assert db.read_sync(lambda se: se.get(Exam, "1.1", populate_existing=True)).triage == 0
    # a requeue keeps the read and its review; the next read is version 2
    assert db.write_sync(repo.requeue_study, "2.1")
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "2.1"
    db.write_sync(read, 2)
    history = db.read_sync(repo.ai_history, "1.1")
    assert [(v.version, v.severity, v.review_correct) for v in history.versions] == [(1, 8, 1)]
    assert [(r.version, r.correct) for r in history.reviews] == [(1, True)]
    current = db.read_sync(lambda se: se.get(AIReport, "2.1", populate_existing=True))
    assert (current.version, current.severity, current.reviewed) == (2, 2, False)


def test_an_image_arriving_during_the_read_is_read_next(db):
    receive(db, "1.1", "2.1", quiet=0)
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "2.1"
    context = db.read_sync(repo.study_context, "2.1")
    receive(db, "1.2", "2.1", projection="LATERAL", quiet=0)  # while the model reads
    assert study(db, "2.1").pending

    def read(session):
        repo.save_study_read(session, "2.1", [i.uid for i in context.images], threshold=5,
                             text="r", severity=3)
        queue.complete(session, "2.1", "w", table=queue.STUDIES)

    db.write_sync(read)
    s = study(db, "2.1")
    assert (s.status, s.pending) == (QUEUED, False)  # the late image: a new read
    late = db.read_sync(lambda se: se.get(Exam, "1.2", populate_existing=True))
    assert late.status == QUEUED and late.read_uid == "1.2"
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "2.1"
    assert [i.uid for i in db.read_sync(repo.study_context, "2.1").images] == ["1.1", "1.2"]


def test_an_ignored_study_has_the_reason_and_can_be_sent_as_a_region(db):
    receive(db, "1.1", "2.1", status=IGNORE, region="")
    s = study(db, "2.1")
    assert (s.status, s.reason_code, s.readable) == (IGNORE, "no_region_rule", 0)
    assert db.read_sync(repo.study_context, "2.1") is None  # nothing to read
    assert db.write_sync(repo.requeue_study, "2.1", "chest")
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "2.1"
    context = db.read_sync(repo.study_context, "2.1")
    assert [(i.uid, i.region) for i in context.images] == [("1.1", "chest")]


def test_an_instance_without_a_study_uid_is_a_study_of_its_own(db):
    assert receive(db, "1.7", "", quiet=0) == "1.7"
    assert study(db, "1.7").images == 1
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "1.7"
    assert [i.uid for i in db.read_sync(repo.study_context, "1.7").images] == ["1.7"]


def test_the_study_list_is_urgent_first(db):
    receive(db, "1.1", "2.1", quiet=0)
    receive(db, "1.2", "2.2", quiet=0, priority=3)  # stat: critical
    receive(db, "1.3", "2.3", quiet=0)
    db.write_sync(queue.claim, "w", 60, table=queue.STUDIES)  # 2.2 (stat first)
    while (c := db.write_sync(queue.claim, "w", 60, table=queue.STUDIES)) is not None:
        severity = 9 if c.uid == "2.3" else 1

        def read(session, uid=c.uid, severity=severity):
            repo.save_study_read(session, uid, [], threshold=5, severity=severity)
            queue.complete(session, uid, "w", table=queue.STUDIES)
        db.write_sync(read)
    rows = db.read_sync(repo.study_page, repo.ExamFilter(sort="urgent"))
    assert [r.study.uid for r in rows][:2] in (["2.2", "2.3"], ["2.3", "2.2"])
    assert [r.study.uid for r in rows][2] == "2.1"
    critical = db.read_sync(repo.study_page, repo.ExamFilter(critical=True))
    assert {r.study.uid for r in critical} == {"2.2", "2.3"}
    assert db.read_sync(repo.count_studies, repo.ExamFilter(region="chest")) == 3
    with pytest.raises(ValueError, match="agreement"):
        db.read_sync(repo.study_page, repo.ExamFilter(agreement="TP"))


def test_versions_of_a_study_read_are_kept(db):
    receive(db, "1.1", "2.1", quiet=0)
    for severity in (4, 6):
        assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES) is not None

        def read(session, severity=severity):
            repo.save_study_read(session, "2.1", ["1.1"], threshold=5, severity=severity)
            queue.complete(session, "2.1", "w", table=queue.STUDIES)
        db.write_sync(read)
        db.write_sync(repo.requeue_study, "2.1")
    kept = db.read_sync(lambda s: s.scalars(select(AIReportVersion.severity)).all())
    assert kept == [4]


def test_a_study_is_not_read_while_an_image_of_it_is_being_converted(db):
    """A stat study sent as two images: the first converted, the second received but not
    converted yet; the study waits for it (read once, with both), quiet time or not."""
    receive(db, "1.1", "2.1", priority=3)
    db.write_sync(records.add_exam, ExamInfo(uid="1.2", study_uid="2.1", region="chest",
                                             priority=3))  # status none: converting
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES) is None
    def convert(session):
        repo.finish_conversion(session, "1.2", QUEUED)
        repo.refresh_study(session, "2.1", "1.2", became_readable=True, read_per_study=True,
                           quiet=10, threshold=5)
    db.write_sync(convert)
    assert db.write_sync(queue.claim, "w", 60, table=queue.STUDIES).uid == "2.1"
    assert [i.uid for i in db.read_sync(repo.study_context, "2.1").images] == ["1.1", "1.2"]


def test_purging_error_images_settles_their_studies(db):
    """A study loses its purged error images (counts, first receipt, status rolled up
    again); a study left without images and without an AI read goes with them (its
    copy of the report too); one with an AI read stays, and so does the read."""
    old = utcnow() - dt.timedelta(days=40)

    def image(uid, study, status, seconds=0):
        db.write_sync(records.add_converted, ExamInfo(uid=uid, study_uid=study, region="chest",
                                                      projection="PA", status=status))
        db.write_sync(lambda s: s.execute(Exam.__table__.update().where(Exam.uid == uid)
                                          .values(created=T0 + dt.timedelta(seconds=seconds))))

    image("1.1", "2.1", "error")  # first received, failed
    image("1.2", "2.1", "ignore", seconds=5)
    image("1.3", "2.2", "error")  # all of 2.2 failed, never read
    image("1.4", "", "error")  # a study of its own
    image("1.5", "2.5", "error")  # failed after its study was read
    db.write_sync(repo.save_study_read, "2.5", [], threshold=5, severity=3)
    db.write_sync(repo.save_rad_report, "1.3", severity=2, checked=True)
    db.write_sync(repo.link_rad_report, "1.3", "2.2")
    db.write_sync(repo.refresh_study, "2.1", "1.2", became_readable=False,
                  read_per_study=True, quiet=0.0, threshold=5)
    db.write_sync(lambda s: s.execute(Exam.__table__.update().values(updated=old)))
    purged = db.write_sync(repo.purge_error_exams, utcnow() - dt.timedelta(days=30))
    assert sorted(purged) == ["1.1", "1.3", "1.4", "1.5"]
    study = db.read_sync(repo.get_study, "2.1")
    assert (study.images, study.status, study.created) == (1, IGNORE, T0 + dt.timedelta(
        seconds=5))
    assert db.read_sync(repo.get_study, "2.2") is None
    assert db.read_sync(records.get_rad_report, "2.2") is None
    assert db.read_sync(repo.get_study, "1.4") is None
    kept = db.read_sync(repo.get_study, "2.5")
    assert (kept.images, kept.readable) == (0, 0)
    assert db.read_sync(records.get_ai_report, "2.5").severity == 3
