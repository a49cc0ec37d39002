"""Queue benchmark: claim+complete per second with 1, 4 and 8 worker processes on
PostgreSQL and SQLite; duplicates counted (must be 0).

    .venv/bin/python bench/queue.py [--exams 4000] [--workers 1,4,8] [--no-fsync]

Each run starts a fresh PostgreSQL (fsync on unless --no-fsync, like a production server)
and a fresh SQLite file (WAL, synchronous=FULL, as the application configures it), fills
the queue, starts the worker processes, and times from the moment all of them are connected
and told to go until the queue is empty.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file's name shadows the standard library's `queue`: replace the script's folder on
# sys.path before anything imports it.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

from sqlalchemy import insert, text  # noqa: E402

from support.pgserver import PgServer  # noqa: E402
from xrayvision.db.engine import Database, DatabaseOptions  # noqa: E402
from xrayvision.db.migrate import upgrade  # noqa: E402
from xrayvision.db.models import DONE, QUEUED, Base, Exam, utcnow  # noqa: E402

WORKER = ROOT / "tests" / "support" / "queue_worker.py"


def fill(db: Database, n: int) -> None:
    with db.engine.begin() as conn:
        names = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        if db.is_sqlite:
            for name in names.split(", "):
                conn.execute(text(f"DELETE FROM {name}"))
        else:
            conn.execute(text(f"TRUNCATE {names}"))
    now = utcnow()
    defaults = {c.name: "" for c in Exam.__table__.columns if c.type.python_type is str}
    rows = [{**defaults, "uid": f"1.2.{i}", "status": QUEUED, "priority": i % 3,
             "created": now, "updated": now, "attempts": 0, "lease_owner": None, "cnp": None}
            for i in range(n)]
    with db.engine.begin() as conn:
        conn.execute(insert(Exam), rows)
    with db.engine.begin() as conn:
        # Fresh statistics, as autovacuum keeps them on a live server; without them the
        # planner does not know the queue is large and sorts it instead of walking
        # ix_exams_claim.
        conn.execute(text("ANALYZE exams"))


def run(db: Database, workers: int, exams: int, tmp: Path,
        separate: bool) -> tuple[float, int, int]:
    fill(db, exams)
    outs = [tmp / f"{workers}-{i}.txt" for i in range(workers)]
    for out in outs:
        out.unlink(missing_ok=True)
    flags = ["--wait-for-go", *(["--separate"] if separate else [])]
    procs = [subprocess.Popen([sys.executable, str(WORKER), db.url, f"w{i}", "600", str(out),
                               *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for i, out in enumerate(outs)]
    for proc in procs:  # imports and first connection are not part of the figure
        assert proc.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        proc.wait()
    elapsed = time.perf_counter() - start
    counts = Counter(uid for out in outs if out.exists() for uid in out.read_text().split())
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    with db.engine.connect() as conn:
        done = conn.execute(text("SELECT count(*) FROM exams WHERE status = :s"),
                            {"s": DONE}).scalar()
    return elapsed, duplicates, exams - done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exams", type=int, default=4000)
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    server = PgServer(fsync=not args.no_fsync).start()
    tmp = Path(tempfile.mkdtemp(prefix="xrv-bench-queue-"))
    try:
        pg = Database(DatabaseOptions(url=server.create_database("bench")
                                      .replace("postgresql://", "postgresql+psycopg://")))
        lite = Database(DatabaseOptions(url=f"sqlite:///{tmp / 'bench.db'}"))
        for db in (pg, lite):
            upgrade(db.engine)
        print(f"{args.exams} exams per run; worker processes started together; "
              f"PostgreSQL fsync={'off' if args.no_fsync else 'on'}")
        print("transactions: 'joined' = complete + next claim in one transaction (how a "
              "consumer loop runs); 'separate' = one each")
        print(f"{'backend':<11}{'transactions':>13}{'workers':>8}{'seconds':>9}"
              f"{'claim+complete/s':>18}{'duplicates':>12}{'not done':>10}")
        for name, db in (("postgresql", pg), ("sqlite", lite)):
            for separate in (False, True):
                for workers in counts:
                    elapsed, dups, missing = run(db, workers, args.exams, tmp, separate)
                    mode = "separate" if separate else "joined"
                    print(f"{name:<11}{mode:>13}{workers:>8}{elapsed:>9.2f}"
                          f"{args.exams / elapsed:>18.0f}{dups:>12}{missing:>10}", flush=True)
        pg.close()
        lite.close()
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
