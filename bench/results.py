"""Results benchmark: AI reads sent back to a real PACS (Orthanc) as DICOM SR from the
outbox, against DCMTK sending the same SR files to the same Orthanc.

    .venv/bin/python bench/results.py [--studies 500] [--batch 32] [--backend sqlite]

N studies, each with one AI read and one outbox row (destination dicom), in SQLite or
PostgreSQL. Rows:

- ``xrayvision sender``: :class:`xrayvision.results.sender.ResultSender` in this process
  until the outbox is empty: claim a batch, build each read's two SRs (highdicom: the
  TID 1500 measurement SR and the text SR), C-STORE the batch on one association, record.
  CPU is this process's user + system time.
- ``build only``: the same SRs built, not sent (what the sender's CPU goes to).
- ``storescu``/``dcmsend``: DCMTK sending the SR files (written beforehand) to the same
  Orthanc in one association: the wire and Orthanc's storing, without our work.

Each Orthanc starts empty (its own folder); SR instances/s counts both SRs of a read.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from sqlalchemy import func, select, update  # noqa: E402

from support import records  # noqa: E402
from support.pacs import Orthanc  # noqa: E402
from support.pgserver import PgServer  # noqa: E402
from xrayvision.ai.parse import parse_report  # noqa: E402
from xrayvision.config import load_settings  # noqa: E402
from xrayvision.db import repo  # noqa: E402
from xrayvision.db.engine import Database, DatabaseOptions  # noqa: E402
from xrayvision.db.migrate import upgrade  # noqa: E402
from xrayvision.db.models import PENDING, SENT, ResultOutbox, utcnow  # noqa: E402
from xrayvision.db.repo import ExamInfo, PatientInfo  # noqa: E402
from xrayvision.results.sender import ResultSender  # noqa: E402
from xrayvision.results.sr import build_srs  # noqa: E402

REPORT = ("FINDINGS:\nRight lower lobe consolidation. No pneumothorax.\n\n"
          "IMPRESSION:\nRight lower lobe pneumonia.")
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fill(db: Database, studies: int) -> None:
    """Two DX images and one read per study, its result waiting (destination dicom)."""
    def add(session, i: int) -> None:
        study = f"1.2.826.0.1.3680043.8.498.77.{i}"
        uids = [f"{study}.{n}" for n in (1, 2)]
        for n, uid in enumerate(uids):
            records.add_converted(session, ExamInfo(
                uid=uid, study_uid=study, series_uid=f"{study}.9", accession=f"A{i}",
                modality="DX", sop_class=DX, patient_name=f"Pacient^{i}", region="chest",
                projection=("PA", "LAT")[n]),
                PatientInfo(cnp=f"18001011{i:05d}", name=f"Pacient {i}"))
        repo.save_study_read(session, study, uids, threshold=5, results=("dicom",),
                             text=REPORT, positive=1, severity=7, confidence=80,
                             summary="pneumonia", model="google/medgemma-4b-it",
                             endpoint="primary", latency=2.0, prompt_version="4")

    for i in range(studies):
        db.write_sync(add, i)


def pending(db: Database) -> int:
    return db.read_sync(lambda s: s.scalar(select(func.count()).select_from(ResultOutbox)
                                            .where(ResultOutbox.status == PENDING)))


async def send_all(sender: ResultSender, db: Database) -> None:
    while await sender.send_due():
        pass
    assert pending(db) == 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="0,2",
                        help="[results] workers to measure, comma-separated")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="xrv-bench-results-"))
    server = None
    try:
        if args.backend == "postgresql":
            server = PgServer(fsync=True).start()
            url = server.create_database("bench").replace("postgresql://",
                                                          "postgresql+psycopg://")
        else:
            url = f"sqlite:///{folder / 'bench.db'}"
        db = Database(DatabaseOptions(url=url))
        upgrade(db.engine)
        fill(db, args.studies)
        version = subprocess.run(["Orthanc", "--version"], capture_output=True,
                                 text=True).stdout.split()[1]
        print(f"{args.studies} AI reads (2 SR instances each) to Orthanc {version} on "
              f"loopback; {args.backend}; batch {args.batch}")
        print(f"{'run':<34}{'seconds':>9}{'reads/s':>9}{'SR/s':>8}{'CPU ms/read':>13}")

        def row(label: str, seconds: float, used: float | None) -> None:
            rate = args.studies / seconds
            cpu_text = f"{1000 * used / args.studies:>13.1f}" if used is not None else \
                f"{'-':>13}"
            print(f"{label:<34}{seconds:>9.2f}{rate:>9.1f}{2 * rate:>8.1f}{cpu_text}",
                  flush=True)

        # the sender, as the relay runs it (workers: its SR processes, started before
        # the clock as the relay's are by then)
        for workers in (int(w) for w in args.workers.split(",")):
            db.write_sync(lambda s: s.execute(update(ResultOutbox).values(
                status=PENDING, attempts=0, not_before=utcnow(), lease_owner=None,
                lease_expires=None)))
            pacs = Orthanc(folder / f"orthanc-{workers}", {}).start()
            settings = load_settings(folder / "cfg", env={
                "XRAYVISION_RESULTS_DICOM_DESTINATION": f"ORTHANC@127.0.0.1:{pacs.port}",
                "XRAYVISION_RESULTS_BATCH": str(args.batch),
                "XRAYVISION_RESULTS_WORKERS": str(workers)})
            sender = ResultSender(settings, db, "bench")
            pool = sender._workers()
            if pool is not None:  # (started: spawn and imports, once per relay)
                list(pool.map(abs, range(workers)))
            used, children = cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            asyncio.run(send_all(sender, db))
            seconds = time.perf_counter() - start
            if pool is not None:
                pool.shutdown(wait=True)  # (their CPU counts once they have exited)
            sender.close()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent = (cpu() - used + after.ru_utime + after.ru_stime
                     - children.ru_utime - children.ru_stime)
            row(f"xrayvision sender, workers {workers}", seconds, spent)
            sent = db.read_sync(lambda s: s.scalar(select(func.count()).select_from(
                ResultOutbox).where(ResultOutbox.status == SENT)))
            stored = len(pacs.rest("instances"))
            assert sent == args.studies and stored == 2 * args.studies, (sent, stored)
            pacs.stop()

        # what building costs, and the files for DCMTK
        files = folder / "srs"
        files.mkdir()
        rows = db.read_sync(lambda s: list(s.scalars(select(ResultOutbox))))
        used, start = cpu(), time.perf_counter()
        built = []
        for r in rows:
            doc = db.read_sync(repo.read_document, r.uid, r.version, r.review)
            report = parse_report(doc.text)
            built.append(build_srs(doc, uid_root=settings.results.uid_root,
                                   findings=report.findings, impression=report.impression))
        row("build only (no send)", time.perf_counter() - start, cpu() - used)
        paths = []
        for i, pair in enumerate(built):
            for j, ds in enumerate(pair):
                path = files / f"{i}-{j}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(str(path))

        for tool, command in (
                ("storescu (DCMTK)", lambda port: ["storescu", "-R", "-aet", "XRAYVISION", "-aec",
                                                   "ORTHANC", "127.0.0.1", str(port),
                                                   *paths]),
                ("dcmsend (DCMTK)", lambda port: ["dcmsend", "-aet", "XRAYVISION", "-aec",
                                                  "ORTHANC", "127.0.0.1", str(port),
                                                  "--scan-directories", str(files)])):
            pacs = Orthanc(folder / f"orthanc-{tool.split()[0]}", {}).start()
            start = time.perf_counter()
            before = os.times()
            subprocess.run(command(pacs.port), check=True, capture_output=True,
                           env={**os.environ, "TCP_NODELAY": "1"}, timeout=600)
            after = os.times()
            seconds = time.perf_counter() - start
            used = (after.children_user + after.children_system
                    - before.children_user - before.children_system)
            row(tool, seconds, used)
            assert len(pacs.rest("instances")) == 2 * args.studies
            pacs.stop()
        db.close()
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
