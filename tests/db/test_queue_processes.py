"""The queue under real concurrency: separate worker processes on PostgreSQL (and SQLite)."""

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import insert

from xrayvision.db import queue, repo
from xrayvision.db.models import DONE, QUEUED, Exam, utcnow

WORKER = Path(__file__).resolve().parent.parent / "support" / "queue_worker.py"


def fill(db, n: int) -> None:
    now = utcnow()
    rows = [{"uid": f"1.2.{i}", "status": QUEUED, "priority": i % 3, "created": now,
             "updated": now, "study_uid": "", "series_uid": "", "accession": "",
             "modality": "DX", "region": "chest", "projection": "", "protocol": "",
             "body_part": "", "study_description": "", "series_description": "",
             "calling_aet": "", "error": "", "attempts": 0} for i in range(n)]
    db.write_sync(lambda s: s.execute(insert(Exam), rows))


def run_workers(db, tmp_path, count: int, lease: float = 60) -> list[str]:
    outs = [tmp_path / f"w{i}.txt" for i in range(count)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), db.url, f"w{i}", str(lease),
                               str(out)]) for i, out in enumerate(outs)]
    for proc in procs:
        assert proc.wait(timeout=240) == 0
    return [uid for out in outs if out.exists() for uid in out.read_text().split()]


@pytest.mark.parametrize("workers,exams", [(8, 2000)])
def test_eight_processes_complete_each_exam_exactly_once_postgres(pg_db, tmp_path,
                                                                  workers, exams):
    pg_database = pg_db
    fill(pg_database, exams)
    completed = run_workers(pg_database, tmp_path, workers)
    counts = Counter(completed)
    assert len(counts) == exams, "every exam completed"
    assert max(counts.values()) == 1, "none completed twice"
    assert pg_database.read_sync(repo.queue_counts)[DONE] == exams
    per_worker = [len((tmp_path / f"w{i}.txt").read_text().split()) for i in range(workers)]
    assert sum(1 for n in per_worker if n > 0) >= 2, "work was actually shared"


def test_four_processes_on_sqlite(sqlite_db, tmp_path):
    fill(sqlite_db, 400)
    counts = Counter(run_workers(sqlite_db, tmp_path, 4))
    assert len(counts) == 400 and max(counts.values()) == 1
    assert sqlite_db.read_sync(repo.queue_counts)[DONE] == 400


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_killed_worker_exam_is_reclaimed_after_lease_and_completed_once(
        backend, request, tmp_path):
    db = request.getfixturevalue("pg_db" if backend == "postgresql" else "sqlite_db")
    fill(db, 3)
    lease = 2.0
    proc = subprocess.Popen([sys.executable, str(WORKER), db.url, "doomed", str(lease),
                             str(tmp_path / "doomed.txt"), "--hold"],
                            stdout=subprocess.PIPE, text=True)
    held = proc.stdout.readline().strip()
    assert held, "the worker claimed an exam"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    # Before the lease runs out nobody else gets it.
    others = []
    while (exam := db.write_sync(queue.claim, "survivor", 60)) is not None:
        others.append(exam.uid)
        db.write_sync(queue.complete, exam.uid, "survivor")
    assert held not in others and len(others) == 2
    assert db.write_sync(queue.reclaim_expired, max_attempts=3) == 0

    time.sleep(lease + 0.2)
    assert db.write_sync(queue.reclaim_expired, max_attempts=3) == 1
    exam = db.write_sync(queue.claim, "survivor", 60)
    assert exam.uid == held and exam.attempts == 1
    db.write_sync(queue.complete, held, "survivor")
    assert db.read_sync(repo.queue_counts)[DONE] == 3
    assert db.write_sync(queue.claim, "survivor", 60) is None
