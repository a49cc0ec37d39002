"""Where the uncached global statistics spend their time: the million images of
``bench/api.py`` (read per study) bulk-loaded into PostgreSQL at revision 0008 and
migrated (the tallies counted), then each aggregate, timed alone (min and median of 5):
what ``/api/stats/global`` runs (queue counts, figures from the tallies) beside the same
figures counted from the reports (what it ran before the tallies) and a window with a
partial day at its edge.

    .venv/bin/python bench/stats.py [--exams 1000000]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`
sys.path.append(str(ROOT / "bench"))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import api as bench_api  # noqa: E402
from support.pgserver import PgServer  # noqa: E402
from xrayvision.db import repo, stats  # noqa: E402
from xrayvision.db.engine import Database, DatabaseOptions  # noqa: E402

# the data's last receipt is 2026-11-25; a window of 30 days starting mid-day
SINCE = dt.datetime(2026, 10, 26, 13, tzinfo=dt.UTC)
AGGREGATES = {
    "queue counts (exams by status)": lambda s: repo.queue_counts(s),
    "figures counted from the reports": lambda s: stats.counted_figures(s, per_study=True),
    "figures from the tallies": lambda s: stats.tallied_figures(s, per_study=True),
    "figures, 30 days from mid-day": lambda s: stats.figures(s, SINCE, per_study=True),
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
        started = time.monotonic()
        bench_api.load(db, data)
        print(f"loaded and migrated (tallies counted) in {time.monotonic() - started:.0f} s")
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
