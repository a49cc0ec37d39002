"""A queue worker process for the concurrency tests and the queue benchmark.

``python tests/support/queue_worker.py URL WORKER LEASE OUT [--hold] [--wait-for-go]
[--separate]`` claims and completes exams until the queue is empty, appending each
completed UID to OUT. By default a worker completes an exam and claims its next one in
the same transaction, as a long-running consumer does; ``--separate`` uses one
transaction for each claim and each completion. With ``--hold`` it claims one exam, prints
its UID and waits to be killed (the crashed-worker test). With ``--wait-for-go`` it
connects, prints ``ready`` and starts when a line arrives on stdin.
"""

from __future__ import annotations

import sys
import time

from sqlalchemy.orm import Session

from xrayvision.db import queue
from xrayvision.db.engine import Database, DatabaseOptions


def _complete_and_claim(session: Session, uid: str, worker: str, lease: float):
    queue.complete(session, uid, worker)
    return queue.claim(session, worker, lease)


def work(url: str, worker: str, lease: float, out_path: str, *, hold: bool = False,
         wait_for_go: bool = False, separate: bool = False) -> int:
    db = Database(DatabaseOptions(url=url, pool_size=1))
    if wait_for_go:  # the benchmark times from "go", after imports and the first connect
        db.ping()
        print("ready", flush=True)
        sys.stdin.readline()
    done = 0
    with open(out_path, "a", encoding="ascii") as out:
        exam = db.write_sync(queue.claim, worker, lease)
        while exam is not None:
            if hold:
                print(exam.uid, flush=True)
                time.sleep(3600)
            if separate:
                db.write_sync(queue.complete, exam.uid, worker)
                following = db.write_sync(queue.claim, worker, lease)
            else:
                following = db.write_sync(_complete_and_claim, exam.uid, worker, lease)
            out.write(exam.uid + "\n")
            done += 1
            exam = following
    db.close()
    return done


if __name__ == "__main__":
    url, worker, lease, out = sys.argv[1:5]
    flags = sys.argv[5:]
    work(url, worker, float(lease), out, hold="--hold" in flags,
         wait_for_go="--wait-for-go" in flags, separate="--separate" in flags)
