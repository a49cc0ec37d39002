"""The AI read burnt into a picture (pure: a :class:`~xrayvision.db.repo.ReadDocument` and
the PNG we made of its first image in, a Secondary Capture out, made with highdicom), for
PACS viewers that show neither SR (``[results] secondary_capture``).

The image is our 8-bit PNG as the model saw it, with a black margin below holding, in
white, "AI - NOT A DIAGNOSIS", the severity and confidence, and the impression. Burnt-in
text is ASCII only (the font has no diacritics: "pneumonie bazala"). Its own series of
ours in the original study (Modality OT, ``SeriesNumber`` 9902), ``BurnedInAnnotation
YES``; UIDs derived from the read as the SRs' are (a retry sends the same instance).
"""

from __future__ import annotations

import textwrap
import unicodedata

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from xrayvision.db.repo import ReadDocument
from xrayvision.results.sr import MANUFACTURER, instance_number, person_name, sr_uids

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "AI read (XRayVision) - not a diagnosis - image"
HEADLINE = "AI - NOT A DIAGNOSIS"


def ascii_text(text: str) -> str:
    """``text`` with its accents dropped and anything else outside ASCII removed."""
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii")


def margin_lines(doc: ReadDocument, impression: str, width: int) -> list[str]:
    """The lines burnt in below the image: what it is, the scores, the impression
    (wrapped to ``width`` characters, at most 6 lines)."""
    lines = [HEADLINE + f" - XRayVision, {ascii_text(doc.model) or 'model'}"]
    scores = []
    if doc.severity >= 0:
        scores.append(f"severity {doc.severity}/10")
    if doc.confidence >= 0:
        scores.append(f"confidence {doc.confidence}%")
    if scores:
        lines.append(", ".join(scores).capitalize())
    words = ascii_text(impression or doc.summary).strip()
    if words:
        lines += textwrap.wrap(words, width=max(20, width), max_lines=6,
                               placeholder=" ...")
    return lines


def _scale(image: np.ndarray) -> float:
    """Text size for the image's width (1.0 at 1400 pixels)."""
    return float(max(0.4, image.shape[1] / 1400))


def burn_in(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """The image (grey, 8-bit) with a margin below carrying ``lines``."""
    scale = _scale(image)
    line_height = int(42 * scale)
    margin = np.zeros((line_height * (len(lines) + 1), image.shape[1]), np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(margin, line, (int(12 * scale), line_height * (i + 1)),
                    cv2.FONT_HERSHEY_SIMPLEX, 1.05 * scale, 255, max(1, int(2 * scale)),
                    cv2.LINE_AA)
    return np.ascontiguousarray(np.vstack([image, margin]))


def build_sc(doc: ReadDocument, png: bytes, *, uid_root: str, impression: str) -> Dataset:
    """The Secondary Capture of ``doc`` from the PNG of its first image; ValueError when
    the PNG cannot be decoded."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("the stored PNG cannot be decoded")
    # (about 21 pixels a character at scale 1)
    width = int(image.shape[1] / (21 * _scale(image)))
    pixels = burn_in(image, margin_lines(doc, impression, width))
    uids = sr_uids(uid_root, doc.key, doc.version, doc.review)
    when = doc.study_datetime
    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="MONOCHROME2", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=("L", "F"),
        study_instance_uid=doc.study_uid,
        series_instance_uid=uids.sc_series, series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sc, instance_number=instance_number(doc),
        manufacturer=MANUFACTURER, patient_id=doc.patient_id,
        patient_name=person_name(doc.patient_name),
        patient_birth_date=doc.birth_date.strftime("%Y%m%d") if doc.birth_date else None,
        patient_sex=doc.sex if doc.sex in ("M", "F", "O") else None,
        accession_number=doc.accession, study_id="",
        study_date=when.date() if when else None, study_time=when.time() if when else None,
        referring_physician_name="")
    # (highdicom wants an orientation; which one this picture has we do not know: DICOM's
    # type 2 empty value says so rather than a guess)
    sc.PatientOrientation = []
    sc.Laterality = ""  # (dciodvfy asks for it, type 2C; not known either)
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = "AI-generated preliminary read burnt in; not a diagnosis."
    return sc
