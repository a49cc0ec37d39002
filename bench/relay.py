"""Relay benchmark: a stub model server with fixed latency L and capacity C (requests
beyond C wait), 500 exams through `xrayvision serve --roles relay` on PostgreSQL.

    .venv/bin/python bench/relay.py [--exams 500] [--latency 0.5] [--capacity 16]

Each exam is two model calls (report, then CHK), so the limit is C / L calls per second,
C / (2 L) exams per second. Run 1: one relay process with concurrency = C against that
limit. Run 2: the stub not the bottleneck (capacity 1000), one and then two relay
processes with concurrency C each: two should give about twice one. Relay CPU per exam
is the relay processes' user + system time divided by the exams.

With ``--results``, two more runs as run 1 (stub capacity C): without results, and with
each read sent to a real PACS (Orthanc) as DICOM SR from the outbox ([results]
dicom_destination), timed until the outbox is empty too. Their last column is the CPU of
the SR worker processes the relay starts ([results] workers), per exam: the work moved
out of the relay process.

With ``--shadow``, two more runs as run 1: without a shadow model, and with one (a second
stub, same latency, capacity 1000) and ``[ai] shadow_rate`` high enough that only its
two workers limit the copies; the last columns are the copies stored and the relay CPU
they added per copy. Known-answer probes are off in every run ([probes] interval 0):
their start-up round would fall into the first seconds measured. The shadow reads in
two worker processes the relay starts; their CPU is not in the relay's column.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from sqlalchemy import insert, text  # noqa: E402

from support.pacs import wait_port  # noqa: E402
from support.pgserver import PgServer, free_port  # noqa: E402
from xrayvision.db.engine import Database, DatabaseOptions  # noqa: E402
from xrayvision.db.migrate import upgrade  # noqa: E402
from xrayvision.db.models import Base, Exam, utcnow  # noqa: E402
from xrayvision.images import FilesystemStore  # noqa: E402

XRAYVISION = Path(sys.executable).parent / "xrayvision"
STUB = ROOT / "tests" / "support" / "model_stub.py"


def model_png() -> bytes:
    """What the relay really sends: a synthetic 2500x2000 14-bit DX converted by our own
    pipeline to the model size (896 px, [images] max_side), as the ingest role would."""
    from support.xrays import make_xray
    from xrayvision.dicom.convert import ConvertOptions, convert_dataset

    ds = make_xray(rows=2500, cols=2000, bits=14, window=(8000, 14000), seed=3)
    return convert_dataset(ds, ConvertOptions(max_side=896)).png


def fill(db: Database, store: FilesystemStore, count: int) -> None:
    # (the tables of the code measured: a before/after run may lack the newer ones)
    tables = [t for t in ("ai_reports", "ai_report_versions", "reviews", "rad_reports",
                          "exams", "studies", "tallies", "tally_facts", "result_outbox",
                          "shadow_reads")
              if t in Base.metadata.tables]
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
    if not count:
        return
    png = model_png()
    now = utcnow()
    defaults = {c.name: "" for c in Exam.__table__.columns if c.type.python_type is str}
    rows = []
    for i in range(count):
        uid = f"1.2.826.{i}"
        store.put(uid, "png", png)
        rows.append({**defaults, "uid": uid, "read_uid": uid, "status": "queued",
                     "region": "chest",
                     "priority": 0, "created": now, "updated": now, "attempts": 0,
                     "lease_owner": None, "cnp": None})
    with db.engine.begin() as conn:
        conn.execute(insert(Exam), rows)
        conn.execute(text("ANALYZE exams"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """User + system time of the process's children alive now (its SR workers)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += cpu_seconds(int(child))
    return total


def run(db: Database, url: str, folder: Path, store: FilesystemStore, stub_url: str,
        relays: int, concurrency: int, count: int, extra: dict[str, str] | None = None
        ) -> tuple[float, float, float]:
    """Starts the relays on an empty queue, waits until they are ready, then queues the
    exams and times until all are done (and, with results, the outbox empty). Returns
    (exams per second, relay CPU ms per exam, their children's CPU ms per exam), start-up
    excluded."""
    fill(db, store, 0)
    procs, ports = [], []
    for _ in range(relays):
        port = free_port()
        ports.append(port)
        env = {"PATH": os.environ["PATH"], "XRAYVISION_DATABASE_URL": url,
               "XRAYVISION_SERVER_DATA_DIR": str(folder), "XRAYVISION_AI_PRIMARY_URL": stub_url,
               "XRAYVISION_RELAY_CONCURRENCY": str(concurrency),
               "XRAYVISION_RELAY_SWEEP_INTERVAL": "1", "XRAYVISION_SERVER_LOG_LEVEL": "warning",
               "XRAYVISION_WEB_PORT": str(port), "XRAYVISION_MAINTENANCE_BACKUP_KEEP": "0",
               "XRAYVISION_PROBES_INTERVAL": "0",
               # each exam read on its own: two model calls per exam, as measured since
               # 2026-11-25 (read per study, the queue is of studies, which fill() has not)
               "XRAYVISION_AI_READ_PER": "image", **(extra or {})}
        if "PYTHONPATH" in os.environ:  # another tree's code, for before/after runs
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        procs.append(subprocess.Popen([str(XRAYVISION), "serve", "--roles", "relay"],
                                      cwd=folder, env=env))
    for port in ports:
        wait_ready(port)
    time.sleep(1.0)  # the relays' first claim finds nothing and waits for events
    cpu_before = {p.pid: cpu_seconds(p.pid) for p in procs}
    kids_before = {p.pid: children_cpu(p.pid) for p in procs}
    fill(db, store, count)
    start = time.perf_counter()
    with db.engine.begin() as conn:  # wake them as the ingest role would
        conn.execute(text("SELECT pg_notify('xrayvision_events', :e)"),
                     {"e": '{"type": "exam.queued", "data": {}, "origin": "bench"}'})
    cpu, kids = dict(cpu_before), dict(kids_before)
    elapsed = 0.0
    while True:
        for p in procs:
            cpu[p.pid] = cpu_seconds(p.pid)
            kids[p.pid] = children_cpu(p.pid)
        with db.engine.connect() as conn:
            done = conn.execute(text("SELECT count(*) FROM exams WHERE status = 'done'")).scalar()
            waiting = conn.execute(text(
                "SELECT count(*) FROM result_outbox WHERE status = 'pending'")).scalar() \
                if extra else 0
        if done >= count and not elapsed:
            elapsed = time.perf_counter() - start
        if done >= count and not waiting:
            break
        time.sleep(0.05)
    for p in procs:
        p.terminate()
        p.wait(30)
    used = sum(cpu[pid] - cpu_before[pid] for pid in cpu)
    children = sum(kids[pid] - kids_before[pid] for pid in kids)
    return count / elapsed, 1000 * used / count, 1000 * children / count


def copy_cost(url: str, shadow_url: str, count: int = 300) -> tuple[float, float]:
    """The relay process's CPU for one shadow copy, measured alone (in this process, on
    the same PostgreSQL): the hand-over of the request to a worker process and the
    answer's row (stored in batches), one copy at a time; the workers' CPU apart.
    Returns (ms per copy in this process, ms per copy in the workers)."""
    import asyncio
    import resource

    from xrayvision.ai.client import Endpoint
    from xrayvision.ai.pipeline import ExamContext, study_messages
    from xrayvision.ai.prompts import load_prompts
    from xrayvision.ai.shadow import ShadowReader

    prompts = load_prompts(None)
    messages = study_messages(prompts, ExamContext("chest", "PA", "M", 50), [model_png()],
                              views=["PA"], total=1)
    db = Database(DatabaseOptions(url=url))

    async def measure() -> tuple[float, float]:
        reader = ShadowReader(prompts, db, Endpoint("shadow", shadow_url, "m"),
                              per_minute=1e9)
        for i in range(10):  # the workers started and warm
            await reader.read(f"w{i}", messages)

        def children() -> float:
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            return usage.ru_utime + usage.ru_stime

        started, kids = time.process_time(), children()
        for i in range(count):
            await reader.read(f"c{i}", messages)
        await reader.flush()  # (the relay stores answers in batches)
        used = time.process_time() - started
        reader.close(wait=True)  # (the workers' CPU is known once they are joined)
        return 1000 * used / count, 1000 * (children() - kids) / count

    try:
        return asyncio.run(measure())
    finally:
        db.close()


def wait_ready(port: int, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("relay did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exams", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--results", action="store_true",
                        help="also: with and without each read sent as SR to Orthanc")
    parser.add_argument("--shadow", action="store_true",
                        help="also: with and without a shadow model copying the reads")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="xrv-bench-relay-"))
    server = PgServer(fsync=True).start()
    stubs = []
    try:
        url = server.create_database("bench").replace("postgresql://", "postgresql+psycopg://")
        db = Database(DatabaseOptions(url=url))
        upgrade(db.engine)
        store = FilesystemStore(folder / "images")

        def stub(capacity: int) -> str:
            port = free_port()
            stubs.append(subprocess.Popen([sys.executable, str(STUB), str(port),
                                           str(args.latency), str(capacity)]))
            wait_port(port)
            return f"http://127.0.0.1:{port}"

        c, latency = args.capacity, args.latency
        limit = c / latency / 2
        print(f"{args.exams} exams, 2 model calls each, stub latency {latency} s; PostgreSQL; "
              f"PNG {len(model_png()) // 1024} KiB")
        print(f"{'run':<44}{'exams/s':>9}{'limit':>8}{'of limit':>10}{'CPU ms/exam':>13}"
              + (f"{'SR workers':>12}" if args.results else ""))
        capped = stub(c)
        rate, cpu, _ = run(db, url, folder, store, capped, 1, c, args.exams)
        print(f"{f'1 relay, concurrency {c}, stub capacity {c}':<44}{rate:>9.1f}{limit:>8.1f}"
              f"{rate / limit:>10.2f}{cpu:>13.1f}", flush=True)
        if args.results:
            from support.pacs import Orthanc

            pacs = Orthanc(folder / "orthanc", {}).start()
            try:
                for label, extra in (
                        ("... again, results off", {}),
                        ("... each read sent as SR to Orthanc", {
                            "XRAYVISION_RESULTS_DICOM_DESTINATION":
                                f"ORTHANC@127.0.0.1:{pacs.port}",
                            "XRAYVISION_RESULTS_WORKERS": "2"})):
                    rate, cpu, kids = run(db, url, folder, store, capped, 1, c, args.exams,
                                          extra)
                    print(f"{label:<44}{rate:>9.1f}{limit:>8.1f}{rate / limit:>10.2f}"
                          f"{cpu:>13.1f}{kids:>12.1f}", flush=True)
                stored = len(pacs.rest("instances"))
                assert stored == 2 * args.exams, stored
            finally:
                pacs.stop()
        if args.shadow:
            # a fast shadow (10 ms): its two workers take nearly every copy, the worst case
            port = free_port()
            stubs.append(subprocess.Popen([sys.executable, str(STUB), str(port), "0.01",
                                           "1000"]))
            wait_port(port)
            shadow_url = f"http://127.0.0.1:{port}"
            print(f"{'':<44}{'':>9}{'':>8}{'':>10}{'':>13}{'copies':>8}{'+ms/copy':>9}")
            for _ in range(2):
                _, base, _ = run(db, url, folder, store, capped, 1, c, args.exams)
                print(f"{'... again, no shadow':<44}{'':>9}{'':>8}{'':>10}{base:>13.1f}",
                      flush=True)
                rate, cpu, _ = run(db, url, folder, store, capped, 1, c, args.exams, {
                    "XRAYVISION_AI_SHADOW_URL": shadow_url,
                    "XRAYVISION_AI_SHADOW_RATE": "100000"})
                with db.engine.connect() as conn:
                    copies = conn.execute(text("SELECT count(*) FROM shadow_reads")).scalar()
                per_copy = (cpu - base) * args.exams / copies if copies else float("nan")
                print(f"{'... a shadow model copying the reads':<44}{rate:>9.1f}"
                      f"{limit:>8.1f}{rate / limit:>10.2f}{cpu:>13.1f}{copies:>8}"
                      f"{per_copy:>9.1f}", flush=True)
            for _ in range(2):
                relay_ms, worker_ms = copy_cost(url, shadow_url)
                print(f"one copy alone, 300 in a row: relay process {relay_ms:.2f} ms, "
                      f"shadow workers {worker_ms:.2f} ms", flush=True)
        wide = stub(1000)
        for relays in (1, 2):
            rate, cpu, _ = run(db, url, folder, store, wide, relays, c, args.exams)
            ceiling = relays * c / latency / 2
            label = f"{relays} relay(s), concurrency {c} each, capacity 1000"
            print(f"{label:<44}{rate:>9.1f}{ceiling:>8.1f}{rate / ceiling:>10.2f}{cpu:>13.1f}",
                  flush=True)
        db.close()
    finally:
        for p in stubs:
            p.terminate()
        server.destroy()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
