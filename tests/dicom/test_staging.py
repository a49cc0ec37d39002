"""Received data sets' files: a failed write refuses that instance alone (0xA700), the
association goes on; unfinished transfers leave nothing behind; the folders of processes
that are gone are swept at start. The full disk is a real one (a small tmpfs)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pynetdicom import AE, dimse_messages
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from support.xrays import make_xray
from xrayvision.dicom.ingest import DX_PRESENTATION
from xrayvision.dicom.staging import StagedFile, Staging

from .conftest import ingest_settings, running_ingest

CAN_MOUNT = os.geteuid() == 0 and shutil.which("mount") is not None


def test_a_failed_write_is_kept_and_the_rest_dropped():
    fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    staged = StagedFile(fd, "/dev/full")
    assert staged.write(b"x" * 1000) == 1000
    assert staged.failed is not None and staged.failed.errno == errno.ENOSPC
    first = staged.failed
    assert staged.write(b"y" * 10) == 10  # dropped, not raised
    staged.file.flush()
    assert staged.failed is first
    staged.close()
    assert staged.closed
    assert staged.write(b"after close") == 11  # a transfer ended under the writer


def test_open_sweeps_the_folders_of_gone_processes_only(tmp_path):
    gone = tmp_path / "xrayvision-incoming-abc"
    gone.mkdir()
    (gone / ".lock").touch()
    (gone / "tmp1.dcm").write_bytes(b"partial")
    (gone / "tmp2.dcm").write_bytes(b"partial")
    creating = tmp_path / "xrayvision-incoming-new"  # no lock yet: being created
    creating.mkdir()
    alive = Staging(tmp_path).open()
    try:
        assert alive.swept == 2
        assert not gone.exists() and creating.exists()
        (alive.folder / "tmp3.dcm").write_bytes(b"arriving")
        staging = Staging(tmp_path).open()  # a second process: the first one is alive
        assert staging.swept == 0
        assert (alive.folder / "tmp3.dcm").exists()
        staging.install()
        assert dimse_messages.NamedTemporaryFile == staging.new_file
        staged = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
        assert Path(staged.name).parent == staging.folder and staged.name.endswith(".dcm")
        staged.close()
        folder = staging.folder
        staging.close()
        assert not folder.exists()
        assert dimse_messages.NamedTemporaryFile is tempfile.NamedTemporaryFile
    finally:
        alive.close()


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def staged_files(tmpdir: Path) -> list[str]:
    return sorted(f.name for folder in tmpdir.glob("xrayvision-incoming-*")
                  for f in folder.iterdir() if f.name != ".lock")


def sender(port: int) -> AE:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(DX_PRESENTATION)
    return ae


@pytest.mark.skipif(not CAN_MOUNT, reason="mounting a small disk needs root")
async def test_a_full_disk_refuses_the_instance_and_the_association_goes_on(
        tmp_path, sqlite_db, monkeypatch):
    # The operator's layout: TMPDIR on the image volume, here 6 MiB; an 8 MiB instance,
    # then a small one in the same association.
    with small_disk(tmp_path / "volume", "6m") as volume:
        monkeypatch.setattr(tempfile, "tempdir", str(volume))
        big = make_xray(rows=2048, cols=2048, bits=16, seed=1)
        small = make_xray(seed=2)
        async with running_ingest(ingest_settings(tmp_path), sqlite_db, tmp_path) as ingest:
            def send() -> list[int]:
                assoc = sender(ingest.port).associate("127.0.0.1", ingest.port,
                                                      ae_title="XRAYVISION")
                assert assoc.is_established
                try:
                    return [int(assoc.send_c_store(ds).Status) for ds in (big, small, big)]
                finally:
                    assoc.release()

            statuses = await asyncio.to_thread(send)
            assert statuses == [0xA700, 0x0000, 0xA700]
            assert staged_files(volume) == []  # the refused ones' files are gone
            assert await asyncio.to_thread(ingest.store.exists, small.SOPInstanceUID, "dcm")
            assert not await asyncio.to_thread(ingest.store.exists, big.SOPInstanceUID, "dcm")
            assert (await ingest.converted())["queued"] == 1


async def test_an_unfinished_transfer_leaves_no_file(tmp_path, sqlite_db, monkeypatch):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    async with running_ingest(ingest_settings(tmp_path), sqlite_db, tmp_path) as ingest:
        def send_part_then_abort() -> list[str]:
            assoc = sender(ingest.port).associate("127.0.0.1", ingest.port,
                                                  ae_title="XRAYVISION", max_pdu=16384)
            assert assoc.is_established
            ds = make_xray(rows=1024, cols=1024, bits=16, seed=3)
            [context] = assoc.accepted_contexts
            syntax = context.transfer_syntax[0]
            request = C_STORE()
            request.MessageID = 1
            request.AffectedSOPClassUID = ds.SOPClassUID
            request.AffectedSOPInstanceUID = ds.SOPInstanceUID
            request.Priority = 2
            request.DataSet = io.BytesIO(encode(ds, syntax.is_implicit_VR,
                                                syntax.is_little_endian))
            message = C_STORE_RQ()
            message.primitive_to_message(request)
            for sent, pdu in enumerate(message.encode_msg(context.context_id, 16384)):
                assoc.dul.send_pdu(pdu)
                if sent == 20:  # ~320 KiB of 2 MiB
                    break
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not staged_files(tmpdir):
                time.sleep(0.02)
            arriving = staged_files(tmpdir)
            assoc.abort()
            return arriving

        arriving = await asyncio.to_thread(send_part_then_abort)
        assert len(arriving) == 1  # it was being written
        for _ in range(50):
            if not staged_files(tmpdir):
                break
            await asyncio.sleep(0.1)
        assert staged_files(tmpdir) == []
        assert not list(ingest.store.root.rglob("*.dcm"))  # nothing was stored
