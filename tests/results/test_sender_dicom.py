"""The SR to a real PACS (Orthanc) by C-STORE from the outbox: it arrives in the original
study; a PACS that is down is retried until it is back, and the SR arrives once; a PACS
that refuses what we send dead-letters the result with its reason; a sender killed
mid-send loses nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import select

from support.pacs import Orthanc, storescu, wait_port
from support.pgserver import free_port
from xrayvision.config import load_settings
from xrayvision.db.models import DEAD, PENDING, SENT, ResultOutbox
from xrayvision.results.sender import ResultSender

from .conftest import record_read

SOURCE = Path(get_testdata_file("RG1_UNCR.dcm"))


def outbox(db) -> list[ResultOutbox]:
    return db.read_sync(lambda s: list(s.scalars(select(ResultOutbox).order_by(ResultOutbox.id))))


def sender_for(db, tmp_path: Path, port: int, store=None, **results) -> ResultSender:
    env = {"XRAYVISION_RESULTS_DICOM_DESTINATION": f"ORTHANC@127.0.0.1:{port}",
           "XRAYVISION_RESULTS_RETRY_DELAY": "0.2", "XRAYVISION_RESULTS_TIMEOUT": "5",
           "XRAYVISION_RESULTS_WORKERS": "0",  # (in a thread; the first test: processes)
           **{f"XRAYVISION_RESULTS_{k.upper()}": str(v) for k, v in results.items()}}
    settings = load_settings(tmp_path / "cfg", env=env)
    return ResultSender(settings, db, "test-worker", store=store)


@pytest.fixture
def orthanc(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc", {}).start()
    storescu(pacs.aet, pacs.port, [SOURCE])  # the study as the modality sent it
    yield pacs
    pacs.stop()


async def test_the_sr_arrives_in_the_original_study(db, tmp_path, orthanc, caplog):
    caplog.set_level(logging.DEBUG, logger="xrayvision")
    key = record_read(db, ("dicom",))
    sender = sender_for(db, tmp_path, orthanc.port, workers=2)
    try:
        assert await sender.send_due() == 1
    finally:
        sender.close()
    [row] = outbox(db)
    assert row.status == SENT and row.attempts == 1 and row.error == ""
    study = orthanc.study_instances(dcmread(SOURCE).StudyInstanceUID)
    assert key == dcmread(SOURCE).StudyInstanceUID
    assert len(study["CR"]) == 1 and len(study["SR"]) == 2
    # what the PACS stored is our SR, whole
    found = [r for r in orthanc.rest("tools/lookup", study["SR"][0].encode())
             if r["Type"] == "Instance"]
    (tmp_path / "sr.dcm").write_bytes(orthanc.rest(f"instances/{found[0]['ID']}/file"))
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert sr.VerificationFlag == "UNVERIFIED"
    assert await sender.send_due() == 0  # nothing left


async def test_a_pacs_that_is_down_gets_it_once_when_back(db, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    key = record_read(db, ("dicom",))
    sender = sender_for(db, tmp_path, port)
    assert await sender.send_due() == 1
    [row] = outbox(db)
    assert row.status == PENDING and "no answer from ORTHANC@127.0.0.1" in row.error
    pacs = Orthanc(tmp_path / "orthanc", {}, port=port).start()
    try:
        deadline = time.monotonic() + 30
        while outbox(db)[0].status != SENT and time.monotonic() < deadline:
            await sender.send_due()
            await asyncio.sleep(0.1)
        [row] = outbox(db)
        assert row.status == SENT and row.attempts >= 2
        assert len(pacs.study_instances(key)["SR"]) == 2  # once: same instances every try
    finally:
        pacs.stop()
    # nothing of the patient in the logs above DEBUG (the failure was logged)
    source = dcmread(SOURCE)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records
                      if r.levelno > logging.DEBUG)
    assert "will retry" in logged
    for value in (source.PatientID, str(source.PatientName), "CompressedSamples"):
        assert value not in logged


async def test_a_pacs_refusing_what_we_send_dead_letters_it(db, tmp_path):
    # Orthanc 1.10 has no SOP class list to configure; told to accept only JPEG baseline
    # transfer syntax, it refuses the SR classes outright (A-ASSOCIATE-AC result 3, "abstract
    # syntax not supported"): what a PACS that does not take SR answers.
    pacs = Orthanc(tmp_path / "orthanc", {},
                   options={"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2.4.50"]}).start()
    try:
        record_read(db, ("dicom",))
        sender = sender_for(db, tmp_path, pacs.port)
        assert await sender.send_due() == 1
        [row] = outbox(db)
        assert row.status == DEAD and row.attempts == 1
        assert "accepts none of Comprehensive 3D SR Storage" in row.error
        assert "(SOP class not supported)" in row.error
    finally:
        pacs.stop()


CHILD = """
import asyncio, sys
from pathlib import Path
from xrayvision.config import load_settings
from xrayvision.db.engine import Database, DatabaseOptions
from xrayvision.results.sender import ResultSender
settings = load_settings(Path(sys.argv[1]), env={
    "XRAYVISION_RESULTS_DICOM_DESTINATION": "ORTHANC@127.0.0.1:" + sys.argv[2],
    "XRAYVISION_RESULTS_TIMEOUT": "60", "XRAYVISION_RESULTS_WORKERS": "0"})
db = Database(DatabaseOptions(url=sys.argv[3]))
asyncio.run(ResultSender(settings, db, "doomed", lease_seconds=3).send_due())
"""


async def test_a_sender_killed_mid_send_loses_nothing(sqlite_db, tmp_path, orthanc):
    db = sqlite_db
    key = record_read(db, ("dicom",))
    # a PACS that takes the connection and never answers: the child is mid-send
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1)
    child = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-c", CHILD, str(tmp_path / "cfg"), str(hole.getsockname()[1]),
         str(db.engine.url)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.monotonic() + 30
        while not (outbox(db)[0].lease_owner or "").startswith("doomed"):
            assert time.monotonic() < deadline and child.poll() is None
            await asyncio.sleep(0.05)
        hole.accept()  # (the association request is in)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        hole.close()
    [row] = outbox(db)
    assert row.status == PENDING and row.attempts == 1  # claimed, never recorded
    sender = sender_for(db, tmp_path, orthanc.port)
    assert await sender.send_due() == 0  # still leased to the dead sender
    await asyncio.sleep(3.2)
    assert await sender.send_due() == 1
    [row] = outbox(db)
    assert row.status == SENT and row.attempts == 2
    assert len(orthanc.study_instances(key)["SR"]) == 2
    wait_port(orthanc.port)


async def test_a_dead_sr_worker_is_replaced_and_nothing_lost(db, tmp_path, orthanc):
    """An SR worker process killed (out of memory, by hand): that batch fails and is
    tried again with new workers; the relay's sender goes on."""
    key = record_read(db, ("dicom",))
    sender = sender_for(db, tmp_path, orthanc.port, workers=1)
    try:
        pool = sender._workers()
        assert list(pool.map(abs, [-1])) == [1]  # (started)
        for pid in list(pool._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        assert await sender.send_due() == 1
        [row] = outbox(db)
        assert row.status == PENDING and row.error == "the SR worker process stopped"
        await asyncio.sleep(0.3)
        assert await sender.send_due() == 1
    finally:
        sender.close()
    [row] = outbox(db)
    assert row.status == SENT and row.attempts == 2
    assert len(orthanc.study_instances(key)["SR"]) == 2


async def test_the_secondary_capture_goes_with_the_srs(db, tmp_path, orthanc):
    from xrayvision.dicom.convert import convert_file
    from xrayvision.images import FilesystemStore

    key = record_read(db, ("dicom",))
    store = FilesystemStore(tmp_path / "images")
    store.put(dcmread(SOURCE).SOPInstanceUID, "png", convert_file(str(SOURCE)).png)
    sender = sender_for(db, tmp_path, orthanc.port, store=store, secondary_capture="true")
    assert await sender.send_due() == 1
    [row] = outbox(db)
    assert row.status == SENT, row.error
    study = orthanc.study_instances(key)
    assert len(study["SR"]) == 2 and len(study["OT"]) == 1 and len(study["CR"]) == 1
