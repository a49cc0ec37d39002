"""The AI read burnt into a Secondary Capture: valid for dciodvfy, in the original study,
the text in a margin below the image as it was."""

from __future__ import annotations

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file

from xrayvision.db import repo
from xrayvision.dicom.convert import convert_file
from xrayvision.results.sc import ascii_text, build_sc, margin_lines

from .conftest import record_read
from .test_sr import ROOT, verify


def test_the_sc_passes_dciodvfy_and_keeps_the_image(db, tmp_path):
    key = record_read(db, ())
    doc = db.read_sync(repo.read_document, key, 1, 0)
    png = convert_file(get_testdata_file("RG1_UNCR.dcm")).png
    sc = build_sc(doc, png, uid_root=ROOT, impression="Pneumonie bazală dreaptă.")
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert verify(tmp_path / "sc.dcm") == []
    stored = dcmread(tmp_path / "sc.dcm")
    assert stored.StudyInstanceUID == key and stored.BurnedInAnnotation == "YES"
    assert stored.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and stored.Modality == "OT"
    assert str(stored.PatientName) == "CompressedSamples^RG1"
    import cv2
    original = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    pixels = stored.pixel_array
    assert pixels.shape[1] == original.shape[1] and pixels.shape[0] > original.shape[0]
    assert np.array_equal(pixels[:original.shape[0]], original)  # the image untouched
    margin = pixels[original.shape[0]:]
    assert margin.max() == 255 and np.count_nonzero(margin) > 500  # the text, in white
    again = build_sc(doc, png, uid_root=ROOT, impression="Pneumonie bazală dreaptă.")
    assert again.SOPInstanceUID == sc.SOPInstanceUID  # a retry: the same instance


def test_margin_text_is_ascii_and_says_what_it_is(db):
    key = record_read(db, ())
    doc = db.read_sync(repo.read_document, key, 1, 0)
    lines = margin_lines(doc, "Opacitate bazală dreaptă " * 30, width=60)
    assert lines[0].startswith("AI - NOT A DIAGNOSIS")
    assert lines[1] == "Severity 7/10, confidence 80%"
    assert all(line.isascii() and len(line) <= 60 for line in lines)
    assert len(lines) <= 8 and lines[-1].endswith("...")
    assert ascii_text("Țesut pulmonar, fără revărsat") == "Tesut pulmonar, fara revarsat"
