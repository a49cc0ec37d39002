"""The same SOP Instance UID from two senders (a safety rule: the exam row and the stored
image always come from the same data set). Two pynetdicom associations send 40 UIDs in
lock-step, each UID with another patient, study and pixels per sender; identical copies
are duplicates; a conflicting copy is refused with 0x0111, logged and audited, on both
database backends."""

from __future__ import annotations

import asyncio
import io
import threading

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from dicom.conftest import ingest_settings, running_ingest
from support import records
from support.xrays import make_xray
from xrayvision.db import repo
from xrayvision.db.models import AuditLog
from xrayvision.dicom.ingest import DX_PRESENTATION

PATIENTS = ("1800101123456", "2900202234567")
PAIRS = 40


def copies(uid: str) -> tuple:
    """Two data sets with one SOP Instance UID: other patient, study and pixels."""
    return tuple(make_xray(uid=uid, patient_id=PATIENTS[i], seed=1 + i,
                           study_uid=generate_uid(entropy_srcs=[uid, str(i)]))
                 for i in (0, 1))


def race(port: int, pairs: list[tuple]) -> list[tuple[int, int]]:
    """Both copies of each pair sent at the same moment over two associations; the
    statuses per pair."""
    barrier = threading.Barrier(2)
    statuses: list[list[int]] = [[0, 0] for _ in pairs]

    def sender(side: int) -> None:
        ae = AE(ae_title=f"SENDER{side}")
        ae.add_requested_context(DX_PRESENTATION, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="XRAYVISION")
        assert assoc.is_established
        try:
            for i, pair in enumerate(pairs):
                barrier.wait(timeout=30)
                statuses[i][side] = int(assoc.send_c_store(pair[side]).Status)
        finally:
            assoc.release()

    threads = [threading.Thread(target=sender, args=(side,)) for side in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return [tuple(s) for s in statuses]


async def test_racing_senders_never_mix_patients(tmp_path, db, caplog):
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_KEEP_DICOM="true")
    pairs = [copies(generate_uid()) for _ in range(PAIRS)]
    async with running_ingest(settings, db, tmp_path) as ingest:
        statuses = await asyncio.to_thread(race, ingest.port, pairs)
        await ingest.converted()
        mixed = 0
        for (a, b), status in zip(pairs, statuses, strict=True):
            assert sorted(status) == [0x0000, 0x0111], status
            row = await db.read(repo.get_exam, a.SOPInstanceUID)
            stored = dcmread(io.BytesIO(ingest.store.get(a.SOPInstanceUID, "dcm")))
            winner = a if status[0] == 0 else b
            if (row.exam.cnp, row.exam.study_uid) != (stored.PatientID,
                                                      stored.StudyInstanceUID):
                mixed += 1
            assert stored.PatientID == winner.PatientID
            assert stored.PixelData == winner.PixelData
        assert mixed == 0
        assert await db.read(records.count_exams) == PAIRS
        audits = await db.read(lambda s: s.scalars(select(AuditLog).where(
            AuditLog.action == "dicom.conflict")).all())
        assert len(audits) == PAIRS
        assert {a.detail for a in audits} == {
            "differs in: cnp, study_uid"}  # field names, never the patient's values
    refused = [r for r in caplog.records if "0x0111" in str(getattr(r, "status", ""))]
    assert len(refused) == PAIRS and all(r.levelname == "WARNING" for r in refused)
    for record in refused:
        assert PATIENTS[0] not in record.getMessage() + str(record.__dict__)
        assert PATIENTS[1] not in record.getMessage() + str(record.__dict__)


async def test_identical_copies_are_duplicates_before_and_after_conversion(tmp_path, db):
    settings = ingest_settings(tmp_path)  # the received DICOM is removed once converted
    uid = generate_uid()
    same, other = copies(uid)
    async with running_ingest(settings, db, tmp_path) as ingest:
        statuses = await asyncio.to_thread(race, ingest.port, [(same, same)])
        assert statuses == [(0, 0)]
        await ingest.converted()
        # the received copy is removed just after the conversion commits (never before:
        # a crash in between must leave the DICOM, not lose it)
        for _ in range(100):
            if ingest.store.get(uid, "dcm") is None:
                break
            await asyncio.sleep(0.05)
        assert ingest.store.get(uid, "dcm") is None
        again = await asyncio.to_thread(race, ingest.port, [(same, other)])
        assert again == [(0x0000, 0x0111)]  # judged by the row once the file is gone
        assert await db.read(records.count_exams) == 1
        row = await db.read(repo.get_exam, uid)
        assert row.exam.cnp == PATIENTS[0]
