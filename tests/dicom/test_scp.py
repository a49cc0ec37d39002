"""DCMTK storescu/echoscu against the running SCP."""

import asyncio
import subprocess
import tempfile

import cv2
import numpy as np
from pydicom import dcmread

from support import records
from support.xrays import CT, make_xray, write
from xrayvision.db import repo
from xrayvision.db.models import ERROR, IGNORE, QUEUED, AuditLog, Exam
from xrayvision.dicom.staging import Staging
from xrayvision.images import FilesystemStore

from .conftest import ingest_settings, running_ingest


def sample_files(folder):
    files = [
        write(make_xray(bits=12, window=(2000, 3000), seed=1), folder / "chest.dcm"),
        write(make_xray(bits=14, photometric="MONOCHROME1", body_part="HAND",
                        description="Mana dreapta", seed=2, modality="CR",
                        sop_class="1.2.840.10008.5.1.4.1.1.1"), folder / "hand.dcm"),
        write(make_xray(bits=16, body_part="", description="Something else", seed=3,
                        sop_class="1.2.840.10008.5.1.4.1.1.1.1.1"), folder / "other.dcm"),
    ]
    jpeg = folder / "chest-jpegll.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(write(make_xray(bits=12, seed=4, view="AP"),
                                                 folder / "ap.dcm")), str(jpeg)], check=True)
    return files + [jpeg]


async def test_echo(ingest):
    result = await asyncio.to_thread(
        subprocess.run, ["echoscu", "-aec", "XRAYVISION", "127.0.0.1", str(ingest.port)],
        capture_output=True)
    assert result.returncode == 0


async def test_every_instance_becomes_one_exam_with_metadata_region_and_png(ingest, tmp_path):
    files = sample_files(tmp_path / "in")
    # -xs: propose JPEG lossless (SV1) first, so the compressed file travels as it is.
    result = await ingest.storescu(*files, calling="ER_CR01", args=("-xs",))
    assert result.returncode == 0, result.stderr
    counts = await ingest.converted()
    assert counts[QUEUED] == 3 and counts[IGNORE] == 1 and counts[ERROR] == 0
    for path in files:
        source = dcmread(path)
        row = await ingest.db.read(repo.get_exam, source.SOPInstanceUID)
        assert row.exam.study_uid == source.StudyInstanceUID
        assert row.exam.modality == source.Modality
        assert row.exam.calling_aet == "ER_CR01"
        assert row.patient.cnp == source.PatientID
        png = ingest.store.get(source.SOPInstanceUID, "png")
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert image.shape == (source.Rows, source.Columns)
        assert ingest.store.get(source.SOPInstanceUID, "dcm") is None  # removed after use
    regions = {dcmread(p).SOPInstanceUID: r for p, r in zip(
        files, ["chest", "hand", "", "chest"], strict=True)}
    for uid, region in regions.items():
        exam = (await ingest.db.read(repo.get_exam, uid)).exam
        assert exam.region == region
        if not region:  # ignored, and the reason names the text no rule matched
            assert (exam.status, exam.reason_code) == (IGNORE, "no_region_rule")
            assert exam.error == "no region rule matches study 'Something else'"


async def test_second_store_of_the_same_instance_is_not_a_second_exam(ingest, tmp_path):
    path = write(make_xray(), tmp_path / "one.dcm")
    assert (await ingest.storescu(path, path)).returncode == 0
    assert (await ingest.storescu(path)).returncode == 0
    await ingest.converted()
    assert await ingest.db.read(records.count_exams) == 1


async def test_instance_left_in_none_is_converted_at_start(tmp_path, db):
    """A crash after the ACK: the received DICOM and the row exist, status none."""
    settings = ingest_settings(tmp_path)
    path = write(make_xray(), tmp_path / "x.dcm")
    ds = dcmread(path)
    from xrayvision.dicom.ingest import record_instance
    from xrayvision.images import FilesystemStore

    record_instance(settings, db, FilesystemStore(tmp_path / "images"), ds, path.read_bytes())
    assert (await db.read(repo.queue_counts))["none"] == 1
    async with running_ingest(settings, db, tmp_path) as ingest:
        counts = await ingest.converted()
        assert counts[QUEUED] == 1


async def test_undecodable_pixels_are_acked_then_end_in_error_with_the_reason(ingest, tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = make_xray()
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg stream " * 40])
    ds["PixelData"].VR = "OB"
    path = write(ds, tmp_path / "garbage-jpeg.dcm")
    assert (await ingest.storescu(path, args=("-xs",))).returncode == 0  # recorded: success
    counts = await ingest.converted()
    assert counts[ERROR] == 1
    exam = await ingest.db.read(lambda s: s.get(Exam, ds.SOPInstanceUID))
    assert exam.error.startswith("conversion failed:")
    assert ingest.store.get(ds.SOPInstanceUID, "dcm") is not None  # kept for diagnosis


async def test_inconsistent_instances_get_a_failure_status(ingest, tmp_path):
    short = make_xray(seed=1)
    short.PixelData = short.PixelData[: len(short.PixelData) // 3]
    no_pixels = make_xray(seed=2)
    del no_pixels.PixelData
    good = make_xray(seed=3)
    odd = make_xray(seed=4)
    odd.PhotometricInterpretation = "MONOCHROME3"  # no such thing (conformance: 0xC000)
    files = [write(short, tmp_path / "short.dcm"), write(no_pixels, tmp_path / "nopix.dcm"),
             write(good, tmp_path / "good.dcm"), write(odd, tmp_path / "odd.dcm")]
    result = await ingest.storescu(*files, args=("-nh", "-v"))  # go on after a failure
    responses = [line for line in result.stderr.splitlines() if "Received Store Response" in line]
    assert len(responses) == 4, result.stderr
    assert ["CannotUnderstand" in r for r in responses] == [True, True, False, True]
    counts = await ingest.converted()
    assert counts[QUEUED] == 1 and await ingest.db.read(records.count_exams) == 1


async def test_unsupported_sop_class_is_refused_at_association(ingest, tmp_path):
    path = write(make_xray(sop_class=CT, modality="CT"), tmp_path / "ct.dcm")
    result = await ingest.storescu(path)
    assert result.returncode != 0
    assert "No presentation context for: (CT)" in result.stderr
    assert await ingest.db.read(records.count_exams) == 0


async def test_calling_and_called_ae_rules(tmp_path, db):
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_ALLOWED_CALLING_AETS="PACS1")
    path = write(make_xray(), tmp_path / "x.dcm")
    async with running_ingest(settings, db, tmp_path) as ingest:
        unknown = await ingest.storescu(path, calling="INTRUDER")
        assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stderr
        wrong_called = await ingest.storescu(path, calling="PACS1", called="OTHER")
        assert wrong_called.returncode != 0
        assert "Called AE Title Not Recognized" in wrong_called.stderr
        assert await ingest.db.read(records.count_exams) == 0
        # (audited by the association's thread once the rejection is sent: may trail
        # storescu's exit by a moment)
        audit: list = []
        for _ in range(100):
            audit = await ingest.db.read(
                lambda s: [(r.action, r.username, r.detail) for r in s.query(AuditLog).all()])
            if len(audit) >= 2:
                break
            await asyncio.sleep(0.05)
        # the AE title the peer called (not ours) and why, for each refusal
        assert ("dicom.rejected", "INTRUDER", "called AE 'XRAYVISION': calling AE title "
                "'INTRUDER' is not in [dicom] allowed_calling_aets") in audit
        assert ("dicom.rejected", "PACS1", "called AE 'OTHER': called AE title 'OTHER' is "
                "not ours ('XRAYVISION')") in audit
        ok = await ingest.storescu(path, calling="PACS1")
        assert ok.returncode == 0, ok.stderr
        await ingest.converted()
        assert await ingest.db.read(records.count_exams) == 1


async def test_received_files_are_renamed_from_a_tmpdir_on_the_store(tmp_path, db, monkeypatch):
    """As the operator runs ingest (TMPDIR on the image volume): pynetdicom's streamed
    copy is renamed into the store, the staging folders of processes that are gone are
    removed at start (not those of a live one, nor other files), and conversion (a
    spawned pool, whatever the temporary folder) still works."""
    tmpdir = tmp_path / "images" / ".incoming"
    tmpdir.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    gone = tmpdir / "xrayvision-incoming-gone"
    gone.mkdir()
    (gone / ".lock").touch()
    (gone / "tmp1.dcm").write_bytes(b"partial")
    (tmpdir / "x.txt").write_bytes(b"not ours")
    alive = Staging(tmpdir).open()  # another ingest process on the same volume
    written = []  # files the store wrote itself (a copy), as opposed to moved in
    original_write = FilesystemStore._write
    monkeypatch.setattr(FilesystemStore, "_write", lambda self, target, fill: (
        written.append(target.suffix), original_write(self, target, fill))[1])
    try:
        async with running_ingest(ingest_settings(tmp_path), db, tmp_path) as ingest:
            assert ingest.store.root == tmp_path / "images"
            names = sorted(p.name for p in tmpdir.iterdir())
            assert "xrayvision-incoming-gone" not in names and "x.txt" in names
            assert alive.folder is not None and alive.folder.exists()
            [mine] = [name for name in names if name.startswith("xrayvision-incoming-")
                      and name != alive.folder.name]
            [path] = sample_files(tmp_path / "in")[:1]
            result = await ingest.storescu(path)
            assert result.returncode == 0, result.stderr
            assert (await ingest.converted())["queued"] == 1
            assert [p.name for p in (tmpdir / mine).iterdir()] == [".lock"]
        assert written == [".png"]  # the DICOM was renamed into the store, not copied
        assert not (tmpdir / mine).exists()  # removed as the role stopped
    finally:
        alive.close()


def test_rejection_reason_follows_pynetdicom_order():
    from xrayvision.dicom.handlers import rejection_reason

    assert "allowed_calling_aets" in rejection_reason("X", "XRAYVISION", "XRAYVISION", ["A"],
                                                      True, False)
    assert "'OTHER' is not ours" in rejection_reason("X", "OTHER", "XRAYVISION", ["A"], True,
                                                     False)
    assert "max_associations" in rejection_reason("A", "OTHER", "XRAYVISION", [], True, True)
    assert "no reason" in rejection_reason("A", "OTHER", "XRAYVISION", [], False, False)
