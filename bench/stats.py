"""Where the uncached global statistics spend their time: the million images of
``bench/api.py`` (read per study) bulk-loaded into PostgreSQL, then each aggregate that
``/api/stats/global`` runs, timed alone (min and median of 5).

    .venv/bin/python bench/stats.py [--exams 1000000]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`
sys.path.append(str(ROOT / "bench"))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import api as bench_api  # noqa: E402
from support.pgserver import PgServer  # noqa: E402
from xrayvision.db import repo, stats  # noqa: E402
from xrayvision.db.engine import Database, DatabaseOptions  # noqa: E402
from xrayvision.db.migrate import upgrade  # noqa: E402

AGGREGATES = {
    "queue counts (exams by status)": lambda s: repo.queue_counts(s),
    "AI severity histogram": lambda s: stats.severity_histogram(s, "ai"),
    "radiologist severity histogram": lambda s: stats.severity_histogram(
        s, "rad", per_study=True),
    "agreement, per study": lambda s: repo.agreement_counts(s, 5, "all", per_study=True),
    "review counts": lambda s: stats.review_counts(s),
    "model latency": lambda s: stats.model_latency(s),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exams", type=int, default=1_000_000)
    args = parser.parse_args()
    data = bench_api.rows(args.exams)
    pg = PgServer(fsync=True).start()
    try:
        url = pg.create_database("bench").replace("postgresql://", "postgresql+psycopg://")
        db = Database(DatabaseOptions(url=url))
        upgrade(db.engine)
        bench_api.load_postgresql(db, data)
        print(f"{'aggregate':<34}{'min ms':>9}{'median ms':>11}")
        total = 0.0
        for name, fn in AGGREGATES.items():
            times = []
            for _ in range(5):
                started = time.perf_counter()
                db.read_sync(fn)
                times.append((time.perf_counter() - started) * 1000)
            total += statistics.median(times)
            print(f"{name:<34}{min(times):>9.1f}{statistics.median(times):>11.1f}", flush=True)
        print(f"{'sum of medians':<34}{'':>9}{total:>11.1f}")
        db.close()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
