"""Ingest benchmark: one `storescu` association (TCP_NODELAY=1) sending the benchmark set
into our SCP (durable record before each ACK, conversion in the background), side by
side with DCMTK `storescp` and Orthanc (SQLite index) on the same files; then 4 parallel
senders into our SCP: associations refused, instances stored once, peak RSS.

    .venv/bin/python ../shared/tools/make_xray_dataset.py /tmp/xrds --n 40 --jpegll --j2k
    .venv/bin/python bench/ingest.py /tmp/xrds

"ack ms" is the mean time from a C-STORE request to its durable record, read from our
own `xrayvision_dicom_store_seconds` histogram; it must not grow with conversion time
(JPEG-lossless images take longer to convert than raw ones). "pynetdicom" is the
library we receive with, as shipped: the same AE set-up (data sets streamed to a file)
with a C-STORE handler that records nothing; "our path" is the same with our receive
path (xrayvision.dicom.transport). "cpu ms" is the receiving process's CPU time per
image (ours: without its conversion processes).

Each peer first receives one warm-up instance (a copy of the set's first file under a
new UID), not timed; and the page cache's dirty pages are written out before each peer,
so that none waits on another's write-back, and the set is read once, so that the sender
finds it in the page cache.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT / "tests")  # support.*; and bench/queue.py must not shadow `queue`

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

from support.pacs import Orthanc, wait_port  # noqa: E402
from support.pgserver import free_port  # noqa: E402

XRAYVISION = Path(sys.executable).parent / "xrayvision"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def send(port: int, aet: str, files: list[Path], compressed: bool) -> float:
    cmd = ["storescu", "-aec", aet, *(["-xs"] if compressed else []), "127.0.0.1", str(port),
           *map(str, files)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV, timeout=900)
    return time.perf_counter() - start


def proc_status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found + [g for c in found for g in children(c)]


class Ours:
    aet = "XRAYVISION"

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.port, self.web = free_port(), free_port()
        env = {**ENV, "XRAYVISION_DICOM_HOST": "127.0.0.1",
               "XRAYVISION_DICOM_PORT": str(self.port), "XRAYVISION_WEB_PORT": str(self.web),
               "XRAYVISION_SERVER_LOG_LEVEL": "warning"}
        subprocess.run([str(XRAYVISION), "migrate"], cwd=folder, env=env, check=True,
                       capture_output=True)
        self.proc = subprocess.Popen([str(XRAYVISION), "serve", "--roles", "ingest"],
                                     cwd=folder, env=env)
        wait_port(self.port)
        self.pool_peak_kib = 0
        self._since = (0.0, 0.0)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.web}/metrics").read().decode()
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def mark(self) -> None:
        """From now on, :meth:`ack_ms` counts only the instances received after this."""
        self._since = (self.metric("xrayvision_dicom_store_seconds_count"),
                       self.metric("xrayvision_dicom_store_seconds_sum"))

    def ack_ms(self) -> float:
        count0, sum0 = self._since
        count = self.metric("xrayvision_dicom_store_seconds_count") - count0
        return 1000 * (self.metric("xrayvision_dicom_store_seconds_sum") - sum0) / max(count, 1)

    def exams(self) -> int:
        db = sqlite3.connect(self.folder / "data" / "xrayvision.db")
        try:
            return db.execute("SELECT count(*) FROM exams").fetchone()[0]
        finally:
            db.close()

    def wait_converted(self, timeout: float = 900) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            for child in children(self.proc.pid):
                self.pool_peak_kib = max(self.pool_peak_kib, proc_status(child, "VmHWM"))
            db = sqlite3.connect(self.folder / "data" / "xrayvision.db")
            left = db.execute("SELECT count(*) FROM exams WHERE status = 'none'").fetchone()[0]
            db.close()
            if left == 0:
                return time.perf_counter() - start
            time.sleep(0.2)
        raise RuntimeError("conversion did not finish")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class PynetdicomSink:
    """pynetdicom receiving with a handler that only answers success (data sets streamed
    to a file, as ours): with pynetdicom's own socket, DUL and association reactor
    (``ours=False``), or with ours (xrayvision.dicom.transport)."""

    aet = "XRAYVISION"

    def __init__(self, folder: Path, ours: bool) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(self.port), *(["--ours"] if ours else [])],
            env=ENV, cwd=folder.parent)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_sink(port: int, ours: bool) -> None:
    from pynetdicom import _config, evt
    from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

    from xrayvision.config import load_settings
    from xrayvision.dicom.scp import make_ae
    from xrayvision.dicom.transport import BufferedRequestHandler

    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = make_ae(load_settings(Path.cwd(), env={}))
    server = ae.make_server(("127.0.0.1", port), server_class=ThreadedAssociationServer,
                            evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)],
                            request_handler=BufferedRequestHandler if ours else RequestHandler)
    server.serve_forever()


class StoreScp:
    aet = "STORESCP"

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        (folder / "out").mkdir(parents=True)
        self.proc = subprocess.Popen(["storescp", "-aet", self.aet, "-od", str(folder / "out"),
                                      "+xa", str(self.port)], env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def warm_up_copy(source: Path, target: Path) -> Path:
    """``source`` as another instance (new SOP Instance UID): sent to each peer once
    before the timed association, so that one-time start-up costs (imports, the first
    statement compilations) are not counted per instance, nor is it a duplicate."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    ds = dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(target)
    return target


def read_through(files: list[Path]) -> None:
    """Reads ``files`` once, so that the sender finds them in the page cache."""
    for path in files:
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass


def timed(peer, warm: list[Path], files: list[Path], compressed: bool) -> tuple[float, float]:
    """Images per second of one association sending ``files`` (after the warm-up one),
    and the receiving process's CPU milliseconds per image (its pool excluded). Dirty
    pages left by the previous peer (storescp and Orthanc do not fsync) are written out
    first, so that no peer waits on another's write-back; and the files are read once,
    so that no peer's run includes the sender reading them from disk (this machine
    evicts pages unused for a minute or two: the first peer of each set paid for it)."""
    os.sync()
    read_through(files)
    send(peer.port, peer.aet, warm, compressed)
    if isinstance(peer, Ours):
        peer.mark()
    cpu = cpu_seconds(peer.proc.pid)
    rate = len(files) / send(peer.port, peer.aet, files, compressed)
    return rate, 1000 * (cpu_seconds(peer.proc.pid) - cpu) / len(files)


def one_association(sets: dict[str, list[Path]], tmp: Path) -> None:
    print("one association, storescu -> peer (images/s; ack ms = mean C-STORE to durable "
          "record, ours only); each peer first gets one warm-up instance, not timed")
    print(f"{'set':<8}{'ours':>8}{'ack ms':>8}{'cpu ms':>8}{'pynetdicom':>12}{'cpu ms':>8}"
          f"{'our path':>10}{'cpu ms':>8}{'storescp':>10}{'orthanc':>9}{'ours/orthanc':>14}"
          f"{'converted after':>17}")
    for name, files in sets.items():
        compressed = name != "raw"
        warm = [warm_up_copy(files[0], tmp / f"warm-up-{name}.dcm")]

        ours = Ours(tmp / f"ours-{name}")
        ours_rate, ours_cpu = timed(ours, warm, files, compressed)
        ack = ours.ack_ms()
        convert_s = ours.wait_converted()
        assert ours.exams() == len(files) + 1
        ours.stop()
        sinks = {}
        for ours_path in (False, True):
            sink = PynetdicomSink(tmp / f"sink-{name}-{ours_path}", ours_path)
            sinks[ours_path] = timed(sink, warm, files, compressed)
            sink.stop()
        scp = StoreScp(tmp / f"scp-{name}")
        scp_rate, _ = timed(scp, warm, files, compressed)
        scp.stop()
        orthanc = Orthanc(tmp / f"orthanc-{name}", {}).start()
        orthanc_rate = timed(orthanc, warm, files, compressed)[0]
        orthanc.stop()
        (pyn_rate, pyn_cpu), (path_rate, path_cpu) = sinks[False], sinks[True]
        print(f"{name:<8}{ours_rate:>8.1f}{ack:>8.1f}{ours_cpu:>8.1f}{pyn_rate:>12.1f}"
              f"{pyn_cpu:>8.1f}{path_rate:>10.1f}{path_cpu:>8.1f}{scp_rate:>10.1f}"
              f"{orthanc_rate:>9.1f}"
              f"{ours_rate / orthanc_rate:>14.2f}{convert_s:>15.1f} s", flush=True)


def parallel_senders(files: list[Path], tmp: Path, senders: int = 4) -> None:
    ours = Ours(tmp / "ours-parallel")
    cmd = ["storescu", "-aec", ours.aet, "127.0.0.1", str(ours.port), *map(str, files)]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(senders)]
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, proc_status(ours.proc.pid, "VmHWM"))
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    refused = sum(1 for p in procs if p.returncode != 0)
    ours.wait_converted()
    peak = max(peak, proc_status(ours.proc.pid, "VmHWM"))
    exams = ours.exams()
    ours.stop()
    print(f"\n{senders} parallel senders, each sending all {len(files)} raw files "
          f"({senders * len(files)} C-STOREs) in {elapsed:.1f} s")
    print(f"associations failed: {refused}; exams stored: {exams} (each instance once: "
          f"{exams == len(files)})")
    print(f"peak RSS of the ingest process: {peak / 1024:.0f} MB; "
          f"largest conversion worker: {ours.pool_peak_kib / 1024:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path, nargs="?")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)  # PynetdicomSink's process
    parser.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        return run_sink(args.sink, args.ours)
    if args.dataset is None:
        parser.error("the dataset folder is required")
    sets = {}
    for name in ("raw", "jpegll"):
        files = sorted((args.dataset / name).glob("*.dcm"))
        sets[name] = files[: args.limit] if args.limit else files
    tmp = Path(tempfile.mkdtemp(prefix="xrv-bench-ingest-"))
    try:
        one_association(sets, tmp)
        parallel_senders(sets["raw"], tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
