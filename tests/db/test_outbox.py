"""The results outbox's contract (db/repo/outbox.py), on both backends."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from support import records
from xrayvision.db import repo
from xrayvision.db.models import DEAD, PENDING, SENT, SUPERSEDED, ResultOutbox, Review, utcnow
from xrayvision.db.repo import ExamInfo


def rows(db) -> list[ResultOutbox]:
    return db.read_sync(lambda s: list(s.scalars(select(ResultOutbox).order_by(ResultOutbox.id))))


def read(db, uid="1.1", results=("dicom", "fhir"), **fields):
    db.write_sync(records.add_exam, ExamInfo(uid=uid, region="chest", status="processing"))
    db.write_sync(repo.save_ai_read, uid, threshold=5, results=results,
                  **{"text": "IMPRESSION:\nnormal", "severity": 1, **fields})


def test_a_read_and_a_review_are_enqueued_with_them(db):
    read(db, results=())
    assert rows(db) == []  # no destination: nothing
    read(db, "1.2")
    assert [(r.destination, r.uid, r.version, r.review, r.status) for r in rows(db)] == [
        ("dicom", "1.2", 1, 0, PENDING), ("fhir", "1.2", 1, 0, PENDING)]
    db.write_sync(repo.review_ai_report, "1.2", correct=True, note="", username="ana",
                  results=("dicom",))
    last = rows(db)[-1]
    assert (last.destination, last.version) == ("dicom", 1) and last.review > 0


def test_claim_leases_counts_and_supersedes(db):
    read(db, "1.3")
    read(db, "1.3", text="IMPRESSION:\nnew")  # version 2: version 1's rows are replaced
    claimed = db.write_sync(repo.claim_results, "w1", limit=10, lease_seconds=60)
    assert [(r.destination, r.version, r.attempts) for r in claimed] == [
        ("dicom", 2, 1), ("fhir", 2, 1)]
    assert [r.status for r in rows(db)] == [SUPERSEDED, SUPERSEDED, PENDING, PENDING]
    # leased: nobody else takes them until the lease runs out (a sender killed mid-send)
    assert db.write_sync(repo.claim_results, "w2", limit=10, lease_seconds=60) == []
    later = utcnow() + dt.timedelta(seconds=61)
    again = db.write_sync(repo.claim_results, "w2", limit=10, lease_seconds=60, now=later)
    assert [r.attempts for r in again] == [2, 2]
    # the first holder lost them: its outcome is not recorded
    assert db.write_sync(repo.result_sent, again[0].id, "w1") is False
    assert db.write_sync(repo.result_sent, again[0].id, "w2") is True
    assert rows(db)[2].status == SENT and rows(db)[2].sent is not None


def test_failures_back_off_then_dead_letter_and_resend(db):
    read(db, "1.4", results=("dicom",))
    [row] = db.write_sync(repo.claim_results, "w", limit=5, lease_seconds=60)
    status = db.write_sync(repo.result_failed, row.id, "w", "PACS down", attempts=1,
                           max_attempts=2, base_delay=30)
    assert status == PENDING
    [stored] = rows(db)
    assert stored.error == "PACS down" and stored.lease_owner is None
    assert (stored.not_before - utcnow()).total_seconds() > 25  # not due before the delay
    assert db.write_sync(repo.claim_results, "w", limit=5, lease_seconds=60) == []
    later = utcnow() + dt.timedelta(seconds=31)
    [row] = db.write_sync(repo.claim_results, "w", limit=5, lease_seconds=60, now=later)
    assert db.write_sync(repo.result_failed, row.id, "w", "PACS down", attempts=2,
                         max_attempts=2, base_delay=30) == DEAD
    depth = db.read_sync(repo.outbox_depths, ("dicom", "fhir"))
    assert [(d.destination, d.pending, d.dead) for d in depth] == [("dicom", 0, 1),
                                                                   ("fhir", 0, 0)]
    assert db.write_sync(repo.resend_result, row.id) is True
    assert db.write_sync(repo.resend_result, row.id) is False  # not dead any more
    [again] = db.write_sync(repo.claim_results, "w", limit=5, lease_seconds=60)
    assert again.attempts == 1


def test_a_refusal_is_dead_at_once(db):
    read(db, "1.5", results=("fhir",))
    [row] = db.write_sync(repo.claim_results, "w", limit=5, lease_seconds=60)
    assert db.write_sync(repo.result_failed, row.id, "w", "HTTP 422", attempts=1,
                         max_attempts=10, base_delay=30, permanent=True) == DEAD


def test_retry_delay_doubles_up_to_an_hour():
    assert [repo.outbox.retry_delay(30, n) for n in (1, 2, 3)] == [30, 60, 120]
    assert repo.outbox.retry_delay(30, 20) == 3600


def test_read_documents_of_a_batch(db):
    """A study's read (its images), an image read on its own, an earlier version, a
    review, and a read that is gone, in one call, in the order asked."""
    for uid in ("7.1.1", "7.1.2"):
        db.write_sync(records.add_converted, ExamInfo(uid=uid, study_uid="7.1", region="chest",
                                                      sop_class="1.2.840.10008.5.1.4.1.1.1",
                                                      patient_name="POPESCU^ION"),
                      repo.PatientInfo(cnp="1800101", name="Ion Popescu", sex="M"))
    for text in ("IMPRESSION:\nfirst", "IMPRESSION:\nsecond"):
        db.write_sync(repo.save_study_read, "7.1", ["7.1.1", "7.1.2"], threshold=5, text=text,
                      severity=3)
    read(db, "7.9", results=())
    db.write_sync(repo.review_ai_report, "7.1", correct=False, note="no", username="ana")
    review = db.read_sync(lambda s: s.scalar(select(Review.id)))
    docs = db.read_sync(repo.read_documents, [("7.1", 2, review), ("7.9", 1, 0), ("7.1", 1, 0),
                                              ("7.8", 1, 0)])
    study, image, first, gone = docs
    assert [i.uid for i in study.images] == ["7.1.1", "7.1.2"] and study.version == 2
    assert study.text.endswith("second") and study.review_correct is False
    assert (study.patient_name, study.sex, study.reviewed_by) == ("POPESCU^ION", "M", "ana")
    assert [i.uid for i in image.images] == ["7.9"] and image.review_correct is None
    assert first.text.endswith("first") and first.version == 1
    assert gone is None
