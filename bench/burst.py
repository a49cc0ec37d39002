"""Time to an AI read under a burst: 40 studies of 1-4 images sent by 4 senders at once
to one `xrayvision serve` (ingest, relay, web; SQLite, as `make run`), a stub model
answering each call after L seconds, and one `stat` study (from an AE title mapped to
``stat``) sent last. For every study: the time from the ACK of its last image to the last
``report.ready`` covering its images on the dashboard's WebSocket. Each ``--read-per``
mode (study, image: both by default) runs on a fresh server in the same run.

    .venv/bin/python bench/burst.py [--latency 1.0] [--studies 40] [--senders 4]
                                    [--size 1024] [--defer 5] [--quiet 10]
                                    [--read-per study,image]

A read is two model calls (report, then CHK), so one read takes 2 L at best; the relay
reads 4 at a time (``[relay] concurrency``). Read per image the burst is a backlog of about
(images x 2 L / 4) seconds; read per study (studies x 2 L / 4), and a routine study is
read once no image of it arrived for ``[ai] study_quiet`` seconds. The stat study should
be read about as soon as it is converted and a relay slot frees: within 2 L + 2 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import aiohttp  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # noqa: E402

from support.pacs import wait_port  # noqa: E402
from support.pgserver import free_port  # noqa: E402
from support.xrays import make_xray  # noqa: E402
from web.conftest import USERS, basic  # noqa: E402

XRAYVISION = Path(sys.executable).parent / "xrayvision"
STUB = ROOT / "tests" / "support" / "model_stub.py"


def studies(count: int, size: int, seed: int = 5) -> list[list]:
    """``count`` studies of 1-4 chest images each (data sets), deterministic."""
    rnd = random.Random(seed)
    found = []
    for s in range(count):
        study = generate_uid(entropy_srcs=[f"burst-study-{seed}-{s}"])
        found.append([make_xray(uid=generate_uid(entropy_srcs=[study, str(i)]), rows=size,
                                cols=size, bits=12, study_uid=study, seed=s * 7 + i,
                                patient_id=f"19001011{s:05d}", view=("PA", "LAT")[i % 2])
                      for i in range(rnd.randint(1, 4))])
    return found


def send(port: int, calling: str, batch: list[list], acks: dict[str, float]) -> None:
    """One association; records the ACK time (monotonic) of every image."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION")
    assert assoc.is_established, "association refused"
    try:
        for study in batch:
            for ds in study:
                status = assoc.send_c_store(ds)
                assert status and status.Status == 0, status
                acks[ds.SOPInstanceUID] = time.monotonic()
    finally:
        assoc.release()


async def listen(base: str, reports: dict[str, float], images: int,
                 ready: asyncio.Event, complete: asyncio.Event) -> None:
    async with aiohttp.ClientSession(headers=basic("admin")) as http, \
            http.ws_connect(base + "/ws") as ws:
        ready.set()
        async for msg in ws:
            event = msg.json()
            if event.get("type") == "report.ready":
                # read per study: the images the read covers (uid is the study's key)
                for uid in event.get("images") or [event["uid"]]:
                    reports.setdefault(uid, time.monotonic())
                if len(reports) >= images:
                    complete.set()
                    return


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@contextlib.contextmanager
def processes(args, tmp: Path, read_per: str) -> Iterator[tuple[str, int]]:
    """The stub model and `xrayvision serve` (every role, SQLite); yields (web base URL,
    DICOM port)."""
    model_port, web_port, dicom_port = free_port(), free_port(), free_port()
    stub = subprocess.Popen([sys.executable, str(STUB), str(model_port), str(args.latency)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("XRAYVISION_")}
    env.update({"XRAYVISION_SERVER_DATA_DIR": str(tmp / "data"),
                "XRAYVISION_WEB_PORT": str(web_port), "XRAYVISION_DICOM_PORT": str(dicom_port),
                "XRAYVISION_AI_PRIMARY_URL": f"http://127.0.0.1:{model_port}",
                "XRAYVISION_DICOM_CONVERT_DEFER": str(args.defer),
                "XRAYVISION_AI_READ_PER": read_per,
                "XRAYVISION_AI_STUDY_QUIET": str(args.quiet),
                "XRAYVISION_PRIORITY_ER_STAT": "stat", "XRAYVISION_WEB_RATE_LIMIT": "0",
                "XRAYVISION_USERS_ADMIN": f"admin:{USERS['admin'].password_hash}"})
    with open(tmp / "serve.log", "wb") as log:
        serve = subprocess.Popen([str(XRAYVISION), "serve", "--migrate"], cwd=tmp, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(model_port)
            wait_port(dicom_port, timeout=60)
            wait_port(web_port, timeout=60)
            yield f"http://127.0.0.1:{web_port}", dicom_port
        finally:
            serve.terminate()
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
            stub.terminate()
            stub.wait()


async def measure(args, base: str, dicom_port: int, routine: list[list],
                  stat: list) -> list[tuple]:
    images = sum(map(len, routine)) + len(stat)
    reports: dict[str, float] = {}
    acks: dict[str, float] = {}
    ready, complete = asyncio.Event(), asyncio.Event()
    listener = asyncio.create_task(listen(base, reports, images, ready, complete))
    await asyncio.wait_for(ready.wait(), 30)
    started = time.monotonic()
    senders = [threading.Thread(target=send, args=(dicom_port, f"MODALITY{n}",
                                                   routine[n::args.senders], acks))
               for n in range(args.senders)]
    for t in senders:
        t.start()
    await asyncio.to_thread(lambda: [t.join() for t in senders])
    await asyncio.to_thread(send, dicom_port, "ER_STAT", [stat], acks)
    print(f"{images} images sent in {time.monotonic() - started:.1f} s", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(complete.wait(), 60 + images * 2 * args.latency)
    listener.cancel()
    print(f"{len(reports)} of {images} read in {time.monotonic() - started:.1f} s", flush=True)

    def waits(group: list[list]) -> list[float]:
        return [max(reports[ds.SOPInstanceUID] for ds in study)
                - acks[study[-1].SOPInstanceUID] for study in group
                if all(ds.SOPInstanceUID in reports for ds in study)]

    rows = []
    for label, group in (("routine studies", routine), ("stat study", [stat])):
        w = waits(group)
        rows.append((label, len(group), len(w), statistics.median(w) if w else None,
                     pct(w, 0.99) if w else None))
    return rows


def seconds(value: float | None) -> str:
    return f"{value:>8.1f}" if value is not None else f"{'-':>8}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--size", type=int, default=1024, help="image rows and columns")
    parser.add_argument("--defer", type=float, default=5.0, help="[dicom] convert_defer")
    parser.add_argument("--quiet", type=float, default=10.0, help="[ai] study_quiet")
    parser.add_argument("--read-per", default="study,image", help="modes, in order")
    args = parser.parse_args()
    routine = studies(args.studies, args.size)
    stat = studies(1, args.size, seed=99)[0]
    table = []
    for mode in args.read_per.split(","):
        tmp = Path(tempfile.mkdtemp(prefix="xrv-bench-burst-"))
        try:
            with processes(args, tmp, mode) as (base, dicom_port):
                table += [(mode, *row) for row in
                          asyncio.run(measure(args, base, dicom_port, routine, stat))]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"model latency L = {args.latency:g} s per call (2 calls per read); "
          f"convert_defer {args.defer:g} s; study_quiet {args.quiet:g} s")
    print(f"{'read per':<10}{'what':<18}{'studies':>8}{'read':>6}{'p50 s':>8}{'p99 s':>8}")
    for mode, label, n, read, p50, p99 in table:
        print(f"{mode:<10}{label:<18}{n:>8}{read:>6}{seconds(p50)}{seconds(p99)}")


if __name__ == "__main__":
    main()
