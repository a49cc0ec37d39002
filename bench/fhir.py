"""FHIR poll benchmark: a real FHIR server (sekmet-fhir) behind a proxy that adds a fixed
latency to every request, N done exams in the database with a radiologist report each on
the server, and one poll cycle of :class:`xrayvision.fhir.poller.Poller`.

    .venv/bin/python bench/fhir.py [--exams 10000] [--latency 0.02] [--concurrency 8]
                                   [--runs index:sqlite,...] [--baseline-exams 2000]
                                   [--lab-share 0.9]

Exams: two per patient, each its own study with an accession number; each report names
its accession. With ``--lab-share``, every server is measured twice side by side: with
the radiology reports only, and with laboratory reports (category LAB, LOINC 58410-2)
added until they are that share of all DiagnosticReports, as in a HIS (``+lab`` rows):
the searches filter them out on the server. The model server is the stub (CHK and TRN
answered at once), in its own process. Rows:

- ``first cycle``: every report new: one search per patient, matching, CHK + TRN, stores.
- ``next cycle``: nothing new: what a steady-state cycle costs.
- ``per-exam (seed)``: the seed's way for comparison, on the first ``--baseline-exams``
  exams: a Patient search and a DiagnosticReport search for every exam (fetch only, no
  matching or storing), at the same concurrency.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from support.fhirpeer import PASSWORD, USER, Sekmet, diagnostic_report, patient  # noqa: E402
from support.pacs import wait_port  # noqa: E402
from support.pgserver import PgServer, free_port  # noqa: E402
from xrayvision.ai.client import Endpoint, ModelClient  # noqa: E402
from xrayvision.ai.prompts import load_prompts  # noqa: E402
from xrayvision.ai.text import TextServices  # noqa: E402
from xrayvision.config import FhirSettings, Settings  # noqa: E402
from xrayvision.db.engine import Database, DatabaseOptions  # noqa: E402
from xrayvision.db.migrate import upgrade  # noqa: E402
from xrayvision.db.models import DONE, Exam, Patient, utcnow  # noqa: E402
from xrayvision.events import LocalBus  # noqa: E402
from xrayvision.fhir.client import FhirClient, FhirServer  # noqa: E402
from xrayvision.fhir.poller import Poller  # noqa: E402

TESTS = ROOT / "tests" / "support"
SYSTEM = "urn:ro:cnp"
TEXT = ("Radiografie toracică PA: fără leziuni pleuro-pulmonare evidente. Sinusuri "
        "costo-diafragmatice libere. Cord în limite normale.")


def cnp(i: int) -> str:
    return f"{1800000000000 + i}"


def resources(patients: int, labs: int = 0) -> list[dict]:
    """Each patient, their two radiology reports, and ``labs`` laboratory reports."""
    found = []
    for i in range(patients):
        found.append(patient(f"p{i}", cnp(i), f"Fam{i}", "Ion", "1970-01-01", "male"))
        for k in range(2):
            found.append(diagnostic_report(f"r{i}-{k}", f"p{i}", TEXT, accession=f"A{i}-{k}"))
        for k in range(labs):
            found.append(diagnostic_report(
                f"l{i}-{k}", f"p{i}", "Hemoglobină 13,5 g/dL; leucocite 7,2 x 10^9/L",
                code="Hemoleucogramă completă", loinc="58410-2", category="LAB",
                when=f"2026-11-{1 + k % 28:02d}T08:00:00Z"))
    return found


def fill_db(db: Database, patients: int) -> None:
    now = utcnow()
    strings = {c.name: "" for c in Exam.__table__.columns if c.type.python_type is str}
    with db.engine.begin() as conn:
        conn.execute(insert(Patient), [
            {"cnp": cnp(i), "name": "", "sex": "", "created": now, "updated": now}
            for i in range(patients)])
        conn.execute(insert(Exam), [
            {**strings, "uid": f"1.2.826.0.1.{i}.{k}", "study_uid": f"1.2.826.1.{i}.{k}",
             "accession": f"A{i}-{k}", "cnp": cnp(i), "region": "chest", "status": DONE,
             "priority": 0, "attempts": 0, "lease_owner": None,
             "series_datetime": now - dt.timedelta(hours=2), "created": now, "updated": now}
            for i in range(patients) for k in range(2)])


async def poll(db: Database, fhir_url: str, model_url: str, concurrency: int, tmp: Path):
    settings = dataclasses.replace(Settings(), fhir=FhirSettings(
        url=fhir_url, username=USER, password=PASSWORD, identifier_system=SYSTEM,
        concurrency=concurrency))
    bus = LocalBus()
    await bus.start()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        model = ModelClient([Endpoint("primary", model_url, "m")], session, max_attempts=1)
        text_services = TextServices(model, load_prompts(None))
        client = FhirClient(FhirServer.from_settings(settings.fhir), session)
        poller = Poller(client, db, text_services, bus, settings)
        rows = []
        for label in ("first cycle", "next cycle"):
            started = time.monotonic()
            stats = await poller.poll_once()
            rows.append((label, time.monotonic() - started, stats.requests,
                         stats.new + stats.amended, stats.errors))
        return rows


async def per_exam(fhir_url: str, exams: int, concurrency: int) -> tuple[float, int]:
    settings = FhirSettings(url=fhir_url, username=USER, password=PASSWORD)
    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = FhirClient(FhirServer.from_settings(settings), session)

        async def one(i: int) -> None:
            async with limit:
                found = await client.find_patients(identifier=cnp(i // 2), system=SYSTEM)
                await client.diagnostic_reports(patient_id=found[0]["id"])

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(exams)))
        return time.monotonic() - started, client.requests


class FhirPeer:
    """One FHIR server (``sekmet`` or ``index``) behind the latency proxy."""

    def __init__(self, kind: str, tmp: Path, latency: float, data: list[dict]) -> None:
        self.kind = kind
        self.procs: list[subprocess.Popen] = []
        proxy_port = free_port()
        self.url = f"http://127.0.0.1:{proxy_port}/fhir"
        self.sekmet: Sekmet | None = None
        started = time.monotonic()
        if kind == "sekmet":
            self.sekmet = Sekmet(tmp / "sekmet", public_url=self.url).start()
            port = self.sekmet.port
            self.sekmet.load(data, batch=500)
        else:
            port = free_port()
            tmp.mkdir(parents=True, exist_ok=True)
            path = tmp / "resources.json"
            path.write_text(json.dumps(data))
            self.procs.append(subprocess.Popen(
                [sys.executable, str(TESTS / "fhir_index.py"), str(port), str(path), self.url]))
            wait_port(port)
        self.load_seconds = time.monotonic() - started
        self.procs.append(subprocess.Popen(
            [sys.executable, str(TESTS / "latency_proxy.py"), str(proxy_port),
             f"http://127.0.0.1:{port}", str(latency)]))
        wait_port(proxy_port)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait()
        if self.sekmet is not None:
            self.sekmet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exams", type=int, default=10000)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", default="index:sqlite,index:postgresql,sekmet:sqlite",
                        help="server:backend pairs; servers: index, sekmet")
    parser.add_argument("--baseline-exams", type=int, default=2000)
    parser.add_argument("--lab-share", type=float, default=0.9,
                        help="also measure with this share of laboratory reports; 0: not")
    args = parser.parse_args()
    patients = args.exams // 2
    # 2 radiology reports a patient: labs so that they are lab_share of all reports
    labs = round(2 * args.lab_share / (1 - args.lab_share)) if args.lab_share else 0
    datasets = {"": resources(patients)}
    if labs:
        datasets["+lab"] = resources(patients, labs)
    tmp = Path(tempfile.mkdtemp(prefix="xrv-bench-fhir-"))
    stub_port = free_port()
    stub = subprocess.Popen(
        [sys.executable, str(TESTS / "model_stub.py"), str(stub_port), "0", "1000"])
    model_url = f"http://127.0.0.1:{stub_port}"
    pg: PgServer | None = None
    table = []
    try:
        wait_port(stub_port)
        runs = [tuple(run.split(":")) for run in args.runs.split(",")]
        for kind, suffix in [(k, s) for k in dict.fromkeys(server for server, _ in runs)
                             for s in datasets]:
            data = datasets[suffix]
            peer = FhirPeer(kind, tmp / f"{kind}{suffix}", args.latency, data)
            reports = sum(r["resourceType"] == "DiagnosticReport" for r in data)
            try:
                print(f"{kind}{suffix}: {patients} patients, {reports} reports "
                      f"({reports - 2 * patients} laboratory) loaded in "
                      f"{peer.load_seconds:.0f} s; {args.latency * 1000:.0f} ms latency per "
                      f"request; concurrency {args.concurrency}", flush=True)
                for backend in [b for server, b in runs if server == kind]:
                    if backend == "postgresql":
                        pg = pg or PgServer(fsync=True).start()
                        url = pg.create_database(f"bench_{kind}{suffix}".replace(
                            "+", "_")).replace(
                            "postgresql://", "postgresql+psycopg://")
                    else:
                        url = f"sqlite:///{tmp}/bench-{kind}{suffix}.db"
                    db = Database(DatabaseOptions(url=url))
                    upgrade(db.engine)
                    fill_db(db, patients)
                    for label, seconds, requests, stored, errors in asyncio.run(
                            poll(db, peer.url, model_url, args.concurrency, tmp)):
                        table.append((kind + suffix, backend, label, args.exams, seconds,
                                      requests, stored, len(errors)))
                    db.close()
                if args.baseline_exams and not suffix:
                    seconds, requests = asyncio.run(per_exam(peer.url, args.baseline_exams,
                                                             args.concurrency))
                    table.append((kind, "-", "per-exam (seed)", args.baseline_exams, seconds,
                                  requests, 0, 0))
            finally:
                peer.stop()
        print(f"{'server':<12}{'backend':<11}{'cycle':>16}{'exams':>7}{'seconds':>9}"
              f"{'requests':>10}{'req/exam':>10}{'exams/s':>9}{'stored':>8}{'errors':>7}")
        for kind, backend, label, exams, seconds, requests, stored, errors in table:
            print(f"{kind:<12}{backend:<11}{label:>16}{exams:>7}{seconds:>9.1f}{requests:>10}"
                  f"{requests / exams:>10.3f}{exams / seconds:>9.0f}{stored:>8}{errors:>7}")
    finally:
        stub.terminate()
        stub.wait()
        if pg is not None:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
