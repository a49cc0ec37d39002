"""The AI read as DICOM SR: checked by dciodvfy (dicom3tools) and read back by highdicom."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from xrayvision.ai.parse import parse_report
from xrayvision.db import repo
from xrayvision.db.models import Review
from xrayvision.results.sr import (
    COMPREHENSIVE_3D_SR,
    COMPREHENSIVE_SR,
    PRIVATE_SCHEME,
    build_srs,
    sr_uids,
)

from .conftest import REPORT, record_read

ROOT = "1.2.826.0.1.3680043.8.498."


def dciodvfy() -> str:
    found = Path(sys.executable).with_name("dciodvfy")
    return str(found) if found.exists() else (shutil.which("dciodvfy") or "dciodvfy")


def verify(path: Path) -> list[str]:
    """dciodvfy's errors for the file (warnings are not errors)."""
    done = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True,
                          timeout=60)
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def build(db, key: str, version: int = 1, review: int = 0, previous=()):
    doc = db.read_sync(repo.read_document, key, version, review)
    report = parse_report(doc.text)
    return doc, build_srs(doc, uid_root=ROOT, findings=report.findings,
                          impression=report.impression, previous=previous)


def test_the_srs_pass_dciodvfy_and_read_back(db, tmp_path):
    key = record_read(db)
    doc, (measurements, text) = build(db, key)
    for ds, name in ((measurements, "m.dcm"), (text, "t.dcm")):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        assert verify(tmp_path / name) == []
    sr = hd.sr.srread(tmp_path / "m.dcm")
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    # in the original study, a series of ours, the patient as the images carried it
    source = dcmread(get_testdata_file("RG1_UNCR.dcm"), stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (source.SeriesInstanceUID,)
    assert str(sr.PatientName) == str(source.PatientName)
    assert sr.PatientID == source.PatientID and sr.AccessionNumber == source.AccessionNumber
    assert sr.Modality == "SR"
    # the algorithm: contributing equipment with AIR's purpose
    equipment = sr.ContributingEquipmentSequence[0]
    purpose = equipment.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("1630", "99IHE")
    assert equipment.ManufacturerModelName == "google/medgemma-4b-it"
    # TID 1500: the images read, the finding, severity and confidence
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    assert [m.value for m in group.get_measurements()] == [7.0, 80.0]
    names = {m.name.value: m.name.scheme_designator for m in group.get_measurements()}
    assert names == {"SEV": PRIVATE_SCHEME, "CONF": PRIVATE_SCHEME}
    [evaluation] = group.get_qualitative_evaluations()
    assert evaluation.value.value == "52101004"  # SNOMED CT: Present
    algorithm = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue
                 for i in _walk(sr) if i.get("ValueType") == "TEXT"}
    assert algorithm["Algorithm Name"] == "google/medgemma-4b-it"
    refs = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert refs.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert refs.ReferencedSOPSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    # the words: a text SR beside it, findings and impression
    words = hd.sr.srread(tmp_path / "t.dcm")
    assert words.SOPClassUID == COMPREHENSIVE_SR
    assert words.SeriesInstanceUID == sr.SeriesInstanceUID
    texts = [item.TextValue for item in _walk(words) if "TextValue" in item]
    assert "Right lower lobe pneumonia." in texts
    assert any("not a diagnosis" in t for t in texts)
    assert REPORT.split("\n")[1] in texts


def _walk(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_same_read_same_instances_and_a_new_version_supersedes(db, tmp_path):
    key = record_read(db)
    _, first = build(db, key)
    _, again = build(db, key)
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    # a review of version 1: new instances, naming the first ones as predecessors
    previous = [sr_uids(ROOT, key, 1, 0)]
    version = db.write_sync(repo.review_ai_report, key, correct=False, note="no consolidation",
                            username="ana")
    review = db.read_sync(lambda s: s.scalar(select(func.max(Review.id))))
    doc, reviewed = build(db, key, version, review, previous)
    assert {d.SOPInstanceUID for d in reviewed}.isdisjoint({d.SOPInstanceUID for d in first})
    assert reviewed[0].SeriesInstanceUID == first[0].SeriesInstanceUID
    predecessor = reviewed[0].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        first[0].SOPInstanceUID
    assert reviewed[0].VerificationFlag == "UNVERIFIED"  # a review is not a signature
    texts = [i.TextValue for i in _walk(reviewed[1]) if "TextValue" in i]
    assert any(t.startswith("Review: ana disagreed with this AI read on ")
               and t.endswith("no consolidation") for t in texts)
    for i, ds in enumerate(reviewed):
        ds.save_as(tmp_path / f"{i}.dcm", enforce_file_format=True)
        assert verify(tmp_path / f"{i}.dcm") == []


@pytest.mark.parametrize("fields", [
    {"positive": -1, "severity": -1, "confidence": -1},  # a read CHK could not score
    {"text": "Normal chest.", "positive": 0, "severity": 0, "confidence": 95},  # no sections
])
def test_reads_without_scores_or_sections_still_valid(db, tmp_path, fields):
    key = record_read(db, **fields)
    _, srs = build(db, key)
    for i, ds in enumerate(srs):
        ds.save_as(tmp_path / f"{i}.dcm", enforce_file_format=True)
        assert verify(tmp_path / f"{i}.dcm") == []
        hd.sr.srread(tmp_path / f"{i}.dcm")


def test_uid_root_is_ours():
    uids = sr_uids("1.2.3.4.", "1.9.8", 2, 0)
    for uid in dataclasses.astuple(uids):
        assert uid.startswith("1.2.3.4.") and len(uid) <= 64
    assert sr_uids("1.2.3.4.", "1.9.8", 3, 0).series == uids.series
    assert sr_uids("1.2.3.4.", "1.9.8", 3, 0).measurements != uids.measurements
