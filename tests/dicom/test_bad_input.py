"""At least 500 generated bad instances against a running SCP (a real `xrayvision serve
--roles ingest` process): truncated files, missing pixel data, wrong SOP class,
inconsistent rows/columns/bits, random bytes in elements, absurd sizes. The SCP keeps
serving in the same association, each detectably bad instance gets a failure status, the
good instances sent between them are stored, and memory does not blow up."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
)

from support.pgserver import free_port
from support.xrays import CR, make_xray, write

XRAYVISION = Path(sys.executable).parent / "xrayvision"
SUCCESS = 0x0000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Peer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        env = {"PATH": "/usr/bin:/bin", "XRAYVISION_DICOM_HOST": "127.0.0.1",
               "XRAYVISION_DICOM_PORT": str(self.port), "XRAYVISION_WEB_PORT": str(free_port()),
               "XRAYVISION_DICOM_CONVERT_WORKERS": "1",
               "XRAYVISION_DICOM_MAX_PIXELS": "50000000"}
        subprocess.run([str(XRAYVISION), "migrate"], cwd=folder, env=env, check=True,
                       capture_output=True)
        self.proc = subprocess.Popen([str(XRAYVISION), "serve", "--roles", "ingest"],
                                     cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        ae = AE(ae_title="FUZZER")
        for sop in (DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage):
            ae.add_requested_context(sop, ExplicitVRLittleEndian)
        for _ in range(100):
            self.assoc = ae.associate("127.0.0.1", self.port, ae_title="XRAYVISION")
            if self.assoc.is_established:
                break
            time.sleep(0.1)
        assert self.assoc.is_established
        self.good: list[str] = []
        self.sent = 0

    def send(self, path: Path) -> int:
        status = self.assoc.send_c_store(path)
        self.sent += 1
        assert status, "the association must stay up"
        return status.Status

    def close(self) -> None:
        self.assoc.release()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    instance = Peer(tmp_path_factory.mktemp("fuzz"))
    yield instance
    instance.close()
    _config.STORE_SEND_CHUNKED_DATASET = False


KINDS = ("truncate", "no_pixels", "wrong_sop_class", "inconsistent", "random_bytes",
         "absurd_size")


def build(kind: str, data, folder: Path) -> tuple[Path, bool]:
    """Writes one bad instance; returns (path, whether it must get a failure status)."""
    ds = make_xray(rows=data.draw(st.integers(8, 64)), cols=data.draw(st.integers(8, 64)),
                   bits=data.draw(st.sampled_from([8, 10, 12, 14, 16])),
                   uid=f"2.25.{data.draw(st.integers(10**20, 10**21))}",
                   seed=data.draw(st.integers(0, 1000)))
    must_fail = True
    if kind == "no_pixels":
        del ds.PixelData
    elif kind == "inconsistent":
        choice = data.draw(st.sampled_from(["rows", "bits", "stored", "samples"]))
        if choice == "rows":
            ds.Rows = ds.Rows * data.draw(st.integers(2, 50))
        elif choice == "bits":
            ds.BitsAllocated = data.draw(st.sampled_from([0, 7, 12, 64]))
        elif choice == "stored":
            ds.BitsStored = data.draw(st.sampled_from([0, 17, 40]))
        else:
            ds.SamplesPerPixel = data.draw(st.sampled_from([0, 2, 4]))
    elif kind == "absurd_size":
        ds.Rows = ds.Columns = data.draw(st.integers(20000, 65535))
        ds.NumberOfFrames = data.draw(st.integers(1, 1000))
    path = write(ds, folder / f"{ds.SOPInstanceUID}.dcm")
    raw = bytearray(path.read_bytes())
    _meta, body = split_dataset(path)  # where the dataset starts, after the file meta
    if kind == "truncate":
        raw = raw[: data.draw(st.integers(body + 1, len(raw) - 1))]
        # A cut inside the trailing pixel data can leave a shorter but valid dataset; only
        # cuts before the pixel data header are certain to be unusable.
        must_fail = len(raw) < raw.find(b"\xe0\x7f\x10\x00") if b"\xe0\x7f\x10\x00" in raw \
            else True
    elif kind == "wrong_sop_class":
        # The file meta (and so the presentation context) says DX; the dataset says CR.
        # Both UIDs take 26 bytes on the wire, so the element keeps its length.
        dx, cr = b"1.2.840.10008.5.1.4.1.1.1.1", CR.encode() + b"\x00"
        at = raw.index(dx, body)
        raw[at:at + len(dx)] = cr
    elif kind == "random_bytes":
        for _ in range(data.draw(st.integers(1, 20))):
            raw[data.draw(st.integers(body, len(raw) - 1))] = data.draw(st.integers(0, 255))
        must_fail = False  # may still be a valid instance; it must not break anything
    path.write_bytes(bytes(raw))
    return path, must_fail


@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_bad_instances_get_failure_statuses_and_the_scp_keeps_serving(peer, tmp_path, kind,
                                                                      data):
    path, must_fail = build(kind, data, tmp_path)
    status = peer.send(path)
    if must_fail:
        assert status != SUCCESS, f"{kind} accepted"
    if peer.sent % 25 == 0:  # a good instance in the same association still gets stored
        uid = generate_uid()
        good = write(make_xray(uid=uid, rows=32, cols=32), tmp_path / "good.dcm")
        assert peer.send(good) == SUCCESS
        peer.good.append(uid)
    path.unlink(missing_ok=True)


def test_after_the_storm(peer):
    """Runs after the generated cases (same module, same server)."""
    assert peer.sent >= 500
    assert peer.proc.poll() is None, "the SCP is still running"
    assert rss_kib(peer.proc.pid) < 400 * 1024, "no memory blow-up"
    db = sqlite3.connect(peer.folder / "data" / "xrayvision.db")
    stored = {uid for (uid,) in db.execute("SELECT uid FROM exams")}
    assert set(peer.good) <= stored and len(peer.good) >= 20
