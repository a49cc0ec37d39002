"""A stored AI read of real DICOM (pydicom-data's CR chest radiographs, recorded as
ingest records them), for the results' tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from support import records
from xrayvision.config import DEFAULT_REGIONS
from xrayvision.db import repo
from xrayvision.dicom.metadata import extract

REPORT = ("FINDINGS:\nRight lower lobe consolidation. No pneumothorax.\n\n"
          "IMPRESSION:\nRight lower lobe pneumonia.")
READ = dict(text=REPORT, positive=1, severity=7, confidence=80,
            summary="Right lower lobe pneumonia", model="google/medgemma-4b-it",
            endpoint="primary", latency=2.5, prompt_version="4")


def radiographs() -> list[Path]:
    """A CR chest radiograph of pydicom-data."""
    return [Path(get_testdata_file("RG1_UNCR.dcm"))]


def record_read(db, results: tuple[str, ...] = ("dicom", "fhir"), *,
                files: list[Path] | None = None, **fields) -> str:
    """The files recorded and converted as ingest does, then read per study (the
    study's key returned) with ``results`` as destinations."""
    uids = []
    key = ""
    for path in files or radiographs():
        ds = dcmread(path, stop_before_pixels=True)
        exam, patient = extract(ds, regions=DEFAULT_REGIONS)
        db.write_sync(records.add_converted, exam, patient)
        uids.append(exam.uid)
        key = exam.study_uid or exam.uid

    def read(session):
        repo.save_study_read(session, key, uids, threshold=5, results=results,
                             **{**READ, **fields})

    db.write_sync(read)
    return key


@pytest.fixture
def stored_read(db):
    return record_read(db)
