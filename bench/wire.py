"""Wire-attack benchmark (issue 16): what unauthenticated peers can make the SCP hold,
our ``xrayvision serve --roles ingest`` side by side with DCMTK ``storescp`` (and Orthanc),
each a separate process measured from outside (VmRSS, VmHWM from /proc).

    .venv/bin/python bench/wire.py

Attacks, one after another on a fresh server each:

- ``pdu flood``: 4 connections each announcing an A-ASSOCIATE-RQ of ~4 GiB and sending
  up to 256 MiB of it;
- ``deflate bomb``: a C-STORE of a 390 KB deflated data set of 10000 x 10000 zero pixels
  (200 MB inflated; over our default ``max_pixels``);
- ``silent peers``: 16 connections sending 10 bytes of a PDU, then nothing; then a
  C-ECHO (the time it takes to be answered);
- ``burst``: 200 A-ASSOCIATE-RQ at once (C-ECHO, one thread each): how many were
  answered (accepted or rejected) within 60 s, and how many accepted.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import Verification  # noqa: E402

from support.pacs import Orthanc, wait_port  # noqa: E402
from support.pgserver import free_port  # noqa: E402
from support.xrays import deflate_bomb as make_bomb  # noqa: E402

XRAYVISION = Path(sys.executable).parent / "xrayvision"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (KiB), with its children (conversion processes)."""
    total = 0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


@contextlib.contextmanager
def ours(folder: Path):
    port = free_port()
    env = {**os.environ, "XRAYVISION_SERVER_DATA_DIR": str(folder / "data"),
           "XRAYVISION_SERVER_ROLES": "ingest", "XRAYVISION_WEB_PORT": str(free_port()),
           "XRAYVISION_DICOM_PORT": str(port), "XRAYVISION_DICOM_HOST": "127.0.0.1",
           "XRAYVISION_DICOM_CONVERT_WORKERS": "1", "XRAYVISION_SERVER_LOG_LEVEL": "warning"}
    with open(folder / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(XRAYVISION), "serve", "--migrate"], env=env,
                                cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=60)
        time.sleep(1)
        yield proc.pid, port, "XRAYVISION"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def storescp(folder: Path):
    port = free_port()
    out = folder / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), "+xa",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield proc.pid, port, "STORESCP"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def orthanc(folder: Path):
    server = Orthanc(folder / "orthanc", {}).start()
    try:
        time.sleep(1)
        yield server.proc.pid, server.port, server.aet
    finally:
        server.stop()


PEERS = {"xrayvision": ours, "storescp": storescp, "orthanc": orthanc}


def pdu_flood(port: int, aet: str, connections: int = 4, each: int = 256 << 20) -> str:
    def attack() -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
            chunk = bytes(1 << 20)
            for _ in range(each >> 20):
                s.sendall(chunk)

    started = time.monotonic()
    threads = [threading.Thread(target=attack) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return f"{time.monotonic() - started:.1f} s"


def deflate_bomb(port: int, aet: str, path: Path) -> str:
    result = subprocess.run(["storescu", "-v", "-xd", "-aec", aet, "127.0.0.1", str(port),
                             str(path)], capture_output=True, text=True, timeout=300)
    status = [line.split("(")[-1].rstrip(")") for line in result.stderr.splitlines()
              if "Received Store Response" in line]
    return status[0] if status else f"no response (rc {result.returncode})"


def echo(port: int, aet: str, timeout: float = 60) -> str:
    ae = AE(ae_title="BENCH")
    ae.acse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    if assoc.is_established:
        assoc.send_c_echo()
        assoc.release()
        return "accepted"
    return "rejected" if assoc.is_rejected else "no answer"


def silent_peers(port: int, aet: str, count: int = 16) -> str:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        for s in socks:
            s.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\0" * 4)
        time.sleep(0.5)
        started = time.monotonic()
        outcome = echo(port, aet, timeout=60)
        return f"C-ECHO {outcome} in {time.monotonic() - started:.2f} s"
    finally:
        for s in socks:
            s.close()


def burst(port: int, aet: str, count: int = 200) -> str:
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            outcome = echo(port, aet, timeout=60)
        except Exception:  # noqa: BLE001 - a refused connection is an outcome too
            outcome = "no answer"
        with lock:
            outcomes.append(outcome)

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    answered = sum(o != "no answer" for o in outcomes)
    accepted = outcomes.count("accepted")
    return (f"{answered}/{count} answered ({accepted} accepted) in "
            f"{time.monotonic() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="xrayvision,storescp,orthanc")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wire-") as tmp:
        folder = Path(tmp)
        bomb = make_bomb(folder / "bomb.dcm", 10000, 10000)
        rows = []
        for name in args.peers.split(","):
            for attack in ("pdu flood", "deflate bomb", "silent peers", "burst"):
                run = folder / f"{name}-{attack.replace(' ', '-')}"
                run.mkdir()
                with PEERS[name](run) as (pid, port, aet):
                    before = rss_kib(pid)
                    if attack == "pdu flood":
                        outcome = pdu_flood(port, aet)
                    elif attack == "deflate bomb":
                        outcome = deflate_bomb(port, aet, bomb)
                    elif attack == "silent peers":
                        outcome = silent_peers(port, aet)
                    else:
                        outcome = burst(port, aet)
                    time.sleep(0.5)
                    after, peak = rss_kib(pid), rss_kib(pid, "VmHWM")
                    alive = echo(port, aet, timeout=30)
                rows.append((name, attack, before // 1024, after // 1024, peak // 1024,
                             outcome, alive))
                print(f"  {name} {attack}: done", file=sys.stderr)
    print("| peer | attack | RSS before MiB | after MiB | peak MiB | outcome | "
          "C-ECHO after |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
