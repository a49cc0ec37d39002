import datetime as dt

import pytest

from support import records
from xrayvision.db import queue, repo
from xrayvision.db.models import DONE, ERROR, PROCESSING, QUEUED, REQUEUE, Exam, utcnow
from xrayvision.db.repo import ExamInfo


def add(db, uid, *, priority=0, status=QUEUED, created=None):
    def _add(session):
        exam, _ = records.add_exam(session, ExamInfo(uid=uid, priority=priority, status=status))
        if created is not None:
            exam.created = created
    db.write_sync(_add)


def status_of(db, uid) -> Exam:
    return db.read_sync(lambda s: s.get(Exam, uid))


def test_claim_takes_highest_priority_then_oldest(db):
    t0 = utcnow() - dt.timedelta(hours=1)
    add(db, "1.1", created=t0 + dt.timedelta(minutes=1))
    add(db, "1.2", created=t0)  # oldest routine
    add(db, "1.3", priority=3, created=t0 + dt.timedelta(minutes=5))  # stat
    add(db, "1.4", status="none", created=t0 - dt.timedelta(minutes=5))  # not converted yet
    add(db, "1.5", status=REQUEUE, created=t0 + dt.timedelta(minutes=2))
    order = [db.write_sync(queue.claim, "w", 60).uid for _ in range(4)]
    assert order == ["1.3", "1.2", "1.1", "1.5"]
    assert db.write_sync(queue.claim, "w", 60) is None
    exam = status_of(db, "1.3")
    assert exam.status == PROCESSING and exam.lease_owner == "w"
    assert exam.lease_expires > utcnow() + dt.timedelta(seconds=50)


def test_claim_on_empty_queue_returns_none(db):
    assert db.write_sync(queue.claim, "w", 60) is None


def test_complete_and_lease_lost(db):
    add(db, "2.1")
    exam = db.write_sync(queue.claim, "w1", 60)
    with pytest.raises(queue.LeaseLost):
        db.write_sync(queue.complete, exam.uid, "w2")
    db.write_sync(queue.complete, exam.uid, "w1")
    done = status_of(db, "2.1")
    assert done.status == DONE and done.lease_owner is None and done.lease_expires is None
    with pytest.raises(queue.LeaseLost):  # completing twice is refused
        db.write_sync(queue.complete, exam.uid, "w1")


def test_lease_lost_rolls_back_the_whole_transaction(db):
    add(db, "2.2")
    db.write_sync(queue.claim, "w1", 60)

    def report_and_complete(session):
        records.save_ai_report(session, "2.2", text="late report")
        queue.complete(session, "2.2", "someone-else")

    with pytest.raises(queue.LeaseLost):
        db.write_sync(report_and_complete)
    assert db.read_sync(records.get_ai_report, "2.2") is None


def test_fail_retries_with_backoff_then_errors(db):
    add(db, "3.1")
    now = utcnow()
    db.write_sync(queue.claim, "w", 60, now)
    assert db.write_sync(queue.fail, "3.1", "w", "model said nonsense",
                         max_attempts=3, base_delay=10, now=now) == QUEUED
    exam = status_of(db, "3.1")
    assert exam.attempts == 1 and exam.error == "model said nonsense"
    assert exam.not_before == now + dt.timedelta(seconds=10)
    # Deferred: not claimable before not_before, claimable after.
    assert db.write_sync(queue.claim, "w", 60, now + dt.timedelta(seconds=5)) is None
    later = now + dt.timedelta(seconds=11)
    assert db.write_sync(queue.claim, "w", 60, later).uid == "3.1"
    assert db.write_sync(queue.fail, "3.1", "w", "again", max_attempts=3, base_delay=10,
                         now=later) == QUEUED
    assert status_of(db, "3.1").not_before == later + dt.timedelta(seconds=20)
    last = later + dt.timedelta(seconds=21)
    db.write_sync(queue.claim, "w", 60, last)
    assert db.write_sync(queue.fail, "3.1", "w", "third", max_attempts=3, base_delay=10,
                         now=last) == ERROR
    exam = status_of(db, "3.1")
    assert exam.status == ERROR and exam.attempts == 3 and exam.error == "third"
    assert db.write_sync(queue.claim, "w", 60, last + dt.timedelta(hours=2)) is None


def test_fail_without_lease_is_refused(db):
    add(db, "3.2")
    with pytest.raises(queue.LeaseLost):
        db.write_sync(queue.fail, "3.2", "w", "x", max_attempts=3, base_delay=1)


def test_retry_delay_is_exponential_and_capped():
    assert [queue.retry_delay(10, n) for n in (1, 2, 3)] == [10, 20, 40]
    assert queue.retry_delay(10, 30) == queue.MAX_RETRY_DELAY


def test_release_keeps_attempts(db):
    add(db, "4.1")
    db.write_sync(queue.claim, "w", 60)
    db.write_sync(queue.release, "4.1", "w")
    exam = status_of(db, "4.1")
    assert exam.status == QUEUED and exam.attempts == 0 and exam.lease_owner is None
    assert db.write_sync(queue.claim, "w2", 60).uid == "4.1"


def test_release_worker_releases_only_its_own(db):
    for uid in ("5.1", "5.2", "5.3"):
        add(db, uid)
    db.write_sync(queue.claim, "a", 60)
    db.write_sync(queue.claim, "a", 60)
    db.write_sync(queue.claim, "b", 60)
    assert db.write_sync(queue.release_worker, "a") == 2
    assert db.read_sync(repo.queue_counts)[PROCESSING] == 1


def test_renew_extends_the_lease(db):
    add(db, "6.1")
    now = utcnow()
    db.write_sync(queue.claim, "w", 10, now)
    db.write_sync(queue.renew, "6.1", "w", 100, now + dt.timedelta(seconds=5))
    assert status_of(db, "6.1").lease_expires == now + dt.timedelta(seconds=105)
    with pytest.raises(queue.LeaseLost):
        db.write_sync(queue.renew, "6.1", "other", 100)


def test_reclaim_expired_requeues_then_errors(db):
    add(db, "7.1")
    now = utcnow()
    db.write_sync(queue.claim, "dead", 10, now)
    assert db.write_sync(queue.reclaim_expired, max_attempts=2,
                         now=now + dt.timedelta(seconds=5)) == 0
    assert db.write_sync(queue.reclaim_expired, max_attempts=2,
                         now=now + dt.timedelta(seconds=11)) == 1
    exam = status_of(db, "7.1")
    assert exam.status == QUEUED and exam.attempts == 1 and exam.lease_owner is None
    with pytest.raises(queue.LeaseLost):  # the dead worker cannot complete any more
        db.write_sync(queue.complete, "7.1", "dead")
    t2 = now + dt.timedelta(seconds=20)
    db.write_sync(queue.claim, "dead-again", 10, t2)
    assert db.write_sync(queue.reclaim_expired, max_attempts=2,
                         now=t2 + dt.timedelta(seconds=11)) == 1
    exam = status_of(db, "7.1")
    assert exam.status == ERROR and exam.attempts == 2 and "lease expired" in exam.error


def test_requeue(db):
    add(db, "8.1")
    db.write_sync(queue.claim, "w", 60)
    assert db.write_sync(queue.requeue, "8.1") is False  # being processed
    db.write_sync(queue.fail, "8.1", "w", "boom", max_attempts=1, base_delay=1)
    assert status_of(db, "8.1").status == ERROR
    assert db.write_sync(queue.requeue, "8.1") is True
    exam = status_of(db, "8.1")
    assert exam.status == REQUEUE and exam.attempts == 0 and exam.error == ""
    assert db.write_sync(queue.requeue, "9.9.9") is False
    assert db.write_sync(queue.claim, "w", 60).uid == "8.1"


def test_workers_that_stop_beating_have_their_exams_reclaimed_at_once(db):
    now = utcnow()
    for uid in ("2.1", "2.2", "2.3", "2.4"):
        add(db, uid)
    db.write_sync(queue.heartbeat, "me", "host-a", 100, now=now)
    db.write_sync(queue.heartbeat, "silent", "host-b", 7, now=now - dt.timedelta(minutes=2))
    db.write_sync(queue.heartbeat, "dead-here", "host-a", 4242, now=now)
    db.write_sync(queue.heartbeat, "my-pid-before", "host-a", 100,
                  now=now - dt.timedelta(seconds=5))  # a restarted container's pid 1
    db.write_sync(queue.heartbeat, "alive-there", "host-b", 4242, now=now)
    for worker in ("silent", "dead-here", "my-pid-before", "alive-there"):
        db.write_sync(queue.claim, worker, 600)
    gone = db.read_sync(queue.gone_workers, stale_after=45, me="me", host="host-a",
                        pid=100, alive=frozenset({1, 100}), now=now)
    assert sorted(gone) == ["dead-here", "my-pid-before", "silent"]
    assert db.write_sync(queue.reclaim_gone, gone, max_attempts=3, now=now) == 3
    held = {u: status_of(db, u) for u in ("2.1", "2.2", "2.3", "2.4")}
    assert sorted(e.status for e in held.values()) == [PROCESSING, QUEUED, QUEUED, QUEUED]
    assert all(e.attempts == 1 for e in held.values() if e.status == QUEUED)
    assert [e.lease_owner for e in held.values() if e.status == PROCESSING] == ["alive-there"]
    assert db.read_sync(queue.gone_workers, stale_after=45, now=now) == []  # forgotten
    db.write_sync(queue.forget_worker, "alive-there")
    later = now + dt.timedelta(seconds=46)
    assert db.read_sync(queue.gone_workers, stale_after=45, now=later) == ["me"]


def test_a_crash_at_the_last_attempt_ends_in_error(db):
    add(db, "3.1")
    db.write_sync(lambda s: s.get(Exam, "3.1").__setattr__("attempts", 2))
    db.write_sync(queue.heartbeat, "w", "h", 1, now=utcnow() - dt.timedelta(hours=1))
    db.write_sync(queue.claim, "w", 600)
    assert db.write_sync(queue.reclaim_gone, ["w"], max_attempts=3) == 1
    exam = status_of(db, "3.1")
    assert exam.status == ERROR and "stopped" in exam.error and exam.attempts == 3
