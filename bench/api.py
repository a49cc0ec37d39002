"""API benchmark: N exams (images) in studies of 1-4 bulk-loaded into PostgreSQL and into
SQLite, a real `xrayvision serve --roles web` process on each (read per study, the
default), and:

- 200 requests each (one client, one at a time) of the first page of ``/api/studies``
  and of ``/api/exams`` in their default order (urgent first), newest first, only the
  critical unreviewed ones and with two filters, an exam detail, ``/api/stats/global``:
  p50 and p99;
- W WebSocket clients connected at once; an event (a requeue through the API) must reach
  all of them: p50/p99 over all deliveries of E events;
- the same requests (fewer) against a process with the list-total and statistics caches
  off (``[web] count_cache = 0``, ``stats_cache = 0``): the cost of a cache miss.

    .venv/bin/python bench/api.py [--exams 1000000] [--requests 200] [--ws-clients 500]
                                  [--events 20] [--backends postgresql,sqlite]

Data: studies of 1-4 images (2.5 on average: 400,000 studies for a million images), one
patient per 4 studies; 90% of studies read (an AI read of the study, 90% of those
reviewed), 60% of those with a checked radiologist report (stored for the study and each
of its images, as the poller does); 2% stat and 5% urgent priority; regions
chest/leg/spine/hand/skull; receipt times over the last year.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime as dt  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
from sqlalchemy import text  # noqa: E402

from support.pgserver import PgServer  # noqa: E402
from support.webproc import web_process  # noqa: E402
from web.conftest import USERS, basic  # noqa: E402
from xrayvision.db.engine import Database, DatabaseOptions  # noqa: E402
from xrayvision.db.migrate import upgrade  # noqa: E402

REGIONS = ("chest", "chest", "chest", "leg", "spine", "hand", "skull")
EXAM_COLUMNS = ("uid", "study_uid", "series_uid", "accession", "cnp", "modality", "region",
                "projection", "protocol", "body_part", "study_description",
                "series_description", "series_datetime", "calling_aet", "priority", "status",
                "error", "attempts", "severity", "reviewed", "triage", "read_uid", "created",
                "updated")
STUDY_COLUMNS = ("uid", "cnp", "accession", "modality", "description", "regions", "views",
                 "calling_aet", "study_datetime", "priority", "images", "readable", "status",
                 "pending", "severity", "reviewed", "triage", "error", "reason_code",
                 "attempts", "created", "last_image", "updated")


def rows(count: int, seed: int = 7):
    """(patients, exams, studies, ai reports, radiologist reports) as tuples,
    deterministic; ``count`` images."""
    rnd = random.Random(seed)
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    patients = [(f"{1000000000000 + i}", f"Pacient^{i}", "M" if i % 2 else "F", now, now)
                for i in range(max(1, count // 10))]
    exams, studies, ai, rad = [], [], [], []
    i = s = 0
    while i < count:
        study = f"1.2.826.0.1.3680043.11.{s}"
        size = min(rnd.randint(1, 4), count - i)
        created = now - dt.timedelta(seconds=rnd.randrange(365 * 86400))
        done = rnd.random() < 0.9
        region = rnd.choice(REGIONS)
        # 2% stat, 5% urgent (ED AE titles); 90% of AI reads reviewed by now
        priority = rnd.choices((0, 1, 3), (93, 5, 2))[0]
        severity = rnd.randrange(0, 11) if done else -1
        reviewed = done and rnd.random() < 0.9
        triage = int(not reviewed and (severity >= 5 or priority >= 3))
        status = "done" if done else rnd.choice(("queued", "error", "ignore"))
        cnp = patients[s % len(patients)][0]
        views = ("PA", "LAT", "PA", "LAT")[:size]
        studies.append((study, cnp, f"A{s}", "DX", "XR", region, ",".join(dict.fromkeys(views)),
                        "", created, priority, size, size if status != "ignore" else 0,
                        status, False, severity, reviewed, triage, "", "", 0, created,
                        created + dt.timedelta(seconds=size), created))
        uids = [f"{study}.{n}" for n in range(size)]
        for n, uid in enumerate(uids):
            at = created + dt.timedelta(seconds=n)
            exams.append((uid, study, f"{study}.9", f"A{s}", cnp, "DX", region, views[n], "",
                          "", "", "", at, "", priority, status, "", 0, severity, reviewed,
                          triage, study if done else uid, at, at))
        if done:
            ai.append((study, "FINDINGS: ...\nIMPRESSION: ...", int(severity >= 5), severity,
                       rnd.randrange(50, 100), "summary", "medgemma", "primary", 2.5, reviewed,
                       int(rnd.random() < 0.8) if reviewed else -1, "", "", created, created))
            if rnd.random() < 0.6:
                rad_severity = max(0, min(10, severity + rnd.randrange(-3, 4)))
                for key in (study, *uids):
                    rad.append((key, f"DR{s}", "1", "final", "Raport ...", "Report ...",
                                f"Dr. {s % 20}", int(rad_severity >= 5), rad_severity,
                                "summary", True, created, created))
        i += size
        s += 1
    return patients, exams, studies, ai, rad


AI_COLUMNS = ("uid", "text", "positive", "severity", "confidence", "summary", "model",
              "endpoint", "latency", "reviewed", "review_correct", "review_note",
              "reviewed_by", "created", "updated")
RAD_COLUMNS = ("uid", "fhir_id", "fhir_version", "fhir_status", "text", "text_en",
               "radiologist", "positive", "severity", "summary", "checked", "created",
               "updated")
PATIENT_COLUMNS = ("cnp", "name", "sex", "created", "updated")
TABLES = (("patients", PATIENT_COLUMNS), ("exams", EXAM_COLUMNS), ("studies", STUDY_COLUMNS),
          ("ai_reports", AI_COLUMNS), ("rad_reports", RAD_COLUMNS))


def load_postgresql(db: Database, data) -> None:
    raw = db.engine.raw_connection()
    try:
        cur = raw.cursor()
        for (table, columns), values in zip(TABLES, data, strict=True):
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def load_sqlite(db: Database, data) -> None:
    def naive(row):
        return tuple(v.replace(tzinfo=None) if isinstance(v, dt.datetime) else v for v in row)

    with db.engine.begin() as conn:
        for (table, columns), values in zip(TABLES, data, strict=True):
            placeholders = ", ".join("?" for _ in columns)
            conn.exec_driver_sql(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",
                [naive(r) for r in values])


def load(db: Database, data) -> None:
    """The data as an installation at revision 0008 held it, then migrated to the head
    (the statistics' tallies counted from the reports, as an upgrade does)."""
    upgrade(db.engine, "0008")
    (load_postgresql if db.engine.dialect.name == "postgresql" else load_sqlite)(db, data)
    upgrade(db.engine)
    # What autovacuum does to a table after a bulk load: statistics and the visibility
    # map (index-only scans for counts).
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE" if db.engine.dialect.name == "postgresql"
                          else "ANALYZE"))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def time_requests(base: str, path: str, n: int) -> list[float]:
    timings = []
    async with aiohttp.ClientSession(headers=basic("admin")) as http:
        async with http.get(base + path) as resp:  # warm the login cache
            assert resp.status == 200, (path, resp.status, await resp.text())
        for _ in range(n):
            started = time.perf_counter()
            async with http.get(base + path) as resp:
                await resp.read()
                assert resp.status == 200, (path, resp.status)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


async def websocket_fanout(base: str, clients: int, events: int, uid: str) -> tuple[list, int]:
    """Latencies (ms) from sending the requeue to each client's receipt of its event, and
    how many clients were lost. Every socket is read all along (pongs answered)."""
    latencies: list[float] = []
    lost = 0
    state = {"sent": 0.0, "n": 0}
    received: dict[int, set[int]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=basic("admin")) as http:

        async def reader(i: int, ws) -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and '"exam.requeued"' in msg.data:
                    latencies.append((time.perf_counter() - state["sent"]) * 1000)
                    received.setdefault(state["n"], set()).add(i)

        sockets, readers = [], []
        for i in range(clients):
            ws = await http.ws_connect(base.replace("http", "ws") + "/ws")
            sockets.append(ws)
            readers.append(asyncio.create_task(reader(i, ws)))
        await asyncio.sleep(1.0)
        for n in range(events):
            state["sent"], state["n"] = time.perf_counter(), n
            async with http.post(base + "/api/requeue", json={"uid": uid}) as resp:
                assert resp.status == 200, await resp.text()
            deadline = time.monotonic() + 10
            while (len(received.get(n, ())) < clients  # noqa: ASYNC110 - a bounded poll
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.01)
            lost += clients - len(received.get(n, ()))
            await asyncio.sleep(0.2)
        for ws in sockets:
            await ws.close()
        for task in readers:
            task.cancel()
    return latencies, lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exams", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--ws-clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--cold-requests", type=int, default=20,
                        help="requests with the total and statistics caches off")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xrv-bench-api-"))
    started = time.monotonic()
    data = rows(args.exams)
    print(f"generated {args.exams} exams in {len(data[2])} studies in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    users = {name: f"{u.role}:{u.password_hash}" for name, u in USERS.items()}
    probe_uid = data[1][len(data[1]) // 2][0]
    paths = [("studies, urgent first", "/api/studies"),
             ("studies, newest first", "/api/studies?sort=received"),
             ("studies, critical unreviewed", "/api/studies?critical=true"),
             ("studies, 2 filters", "/api/studies?status=done&region=spine"),
             ("exams, urgent first", "/api/exams"),
             ("exams, newest first", "/api/exams?sort=received"),
             ("exams, critical unreviewed", "/api/exams?critical=true"),
             ("exams, 2 filters", "/api/exams?status=done&region=spine"),
             ("exam detail", f"/api/exams/{probe_uid}"),
             ("stats/global", "/api/stats/global")]
    table = []
    pg: PgServer | None = None
    try:
        for backend in args.backends.split(","):
            if backend == "postgresql":
                pg = PgServer(fsync=True).start()
                url = pg.create_database("bench").replace("postgresql://",
                                                          "postgresql+psycopg://")
            else:
                url = f"sqlite:///{tmp / 'bench.db'}"
            db = Database(DatabaseOptions(url=url))
            started = time.monotonic()
            load(db, data)
            print(f"{backend}: loaded in {time.monotonic() - started:.0f} s", flush=True)
            db.close()
            # Maintenance would purge the generated error exams older than 30 days while
            # requests are measured; that is a daily job, not part of what is measured.
            with web_process(tmp / backend, url, users, XRAYVISION_WEB_RATE_LIMIT="0",
                             XRAYVISION_MAINTENANCE_ERROR_RETENTION_DAYS="0") as base:
                for label, path in paths:
                    t = asyncio.run(time_requests(base, path, args.requests))
                    table.append((backend, label, len(t), statistics.median(t), pct(t, 0.99)))
                    print(table[-1], flush=True)
                if args.ws_clients:
                    t, lost = asyncio.run(websocket_fanout(base, args.ws_clients, args.events,
                                                           probe_uid))
                    table.append((backend, f"ws event to {args.ws_clients} clients", len(t),
                                  statistics.median(t), pct(t, 0.99)))
                    print(table[-1], f"missed deliveries: {lost}", flush=True)
            if args.cold_requests:
                with web_process(tmp / f"{backend}-cold", url, users,
                                 XRAYVISION_WEB_RATE_LIMIT="0",
                                 XRAYVISION_MAINTENANCE_ERROR_RETENTION_DAYS="0",
                                 XRAYVISION_WEB_COUNT_CACHE="0",
                                 XRAYVISION_WEB_STATS_CACHE="0") as base:
                    for label, path in paths:
                        if label == "exam detail":
                            continue
                        t = asyncio.run(time_requests(base, path, args.cold_requests))
                        table.append((backend, f"{label}, no cache", len(t),
                                      statistics.median(t), pct(t, 0.99)))
                        print(table[-1], flush=True)
            if pg is not None:
                pg.stop()
                pg = None
        print(f"{'backend':<11}{'what':<38}{'samples':>8}{'p50 ms':>9}{'p99 ms':>9}")
        for backend, label, n, p50, p99 in table:
            print(f"{backend:<11}{label:<38}{n:>8}{p50:>9.1f}{p99:>9.1f}")
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
