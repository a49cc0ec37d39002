"""Recording a received instance durably, shared by the SCP, retrieval and ``import``.

:func:`record_instance` writes the encoded dataset to the image store (kind ``dcm``) and
then inserts the exam with status ``none``: when it returns, the instance survives a
crash, so the C-STORE response may say success. No pixel is decoded here; the
conversion worker does that later. Blocking: call it from a thread.

The same SOP Instance UID received more than once (a sender's retry, two senders at
once): the image store keeps the first copy (stored only if absent, atomically), and the
exam row is written only by the copy that was stored or by one with the same identity
(patient, study, series, accession, modality), so the row and the stored image always
come from the same data set. A copy with the same identity is a duplicate (success; the
first copy's pixels are kept); one with another identity is refused.

Errors::

    BadInstance          the dataset lacks what an exam needs       -> DICOM 0xC000
      DeflateError       a deflated data set corrupt or too large    -> DICOM 0xC000
      WrongSOPClass      dataset and presentation context disagree  -> DICOM 0xA900
    ConflictingInstance  the UID is stored for another patient/study -> DICOM 0x0111
    OSError              the image store cannot write               -> DICOM 0xA700
    SQLAlchemyError      the database cannot record it              -> DICOM 0xA700
"""

from __future__ import annotations

import enum
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from xrayvision.config import Settings
from xrayvision.db import repo
from xrayvision.db.engine import Database
from xrayvision.db.repo import ExamInfo
from xrayvision.dicom.convert import ConversionError, check_size
from xrayvision.dicom.deflate import inflate_file, largest_data_set
from xrayvision.dicom.metadata import BadInstance, extract
from xrayvision.images import ImageStore

log = logging.getLogger(__name__)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STORAGE_CLASSES = (CR, DX_PRESENTATION, DX_PROCESSING, SECONDARY_CAPTURE)
# PS3.3 C.7.6.3.1.2 (retired ones included: old files carry them)
PHOTOMETRICS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422",
    "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB", "HSV", "ARGB", "CMYK"})


class WrongSOPClass(BadInstance):
    """The dataset's SOP Class differs from the one it was sent as, or is not accepted."""


class ConflictingInstance(ValueError):
    """The SOP Instance UID is already stored with another identity; ``fields`` names
    what differs (never the values: they are patient data)."""

    def __init__(self, uid: str, fields: list[str]) -> None:
        super().__init__(f"SOP Instance UID {uid} is already stored with another "
                         f"{', '.join(fields)}; the stored instance is kept")
        self.uid = uid
        self.fields = fields


# A stored copy without an exam row this old was left by an attempt that died before its
# row (its sender was never answered); another copy may then take its place.
ORPHAN_SECONDS = 600.0


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    exam: ExamInfo


def storage_classes(settings: Settings) -> tuple[str, ...]:
    return tuple(dict.fromkeys(STORAGE_CLASSES + settings.dicom.extra_sop_classes))


def _pixel_length(ds: Dataset) -> int | None:
    """Length of Pixel Data without reading it when its value was deferred; None when
    unknown (undefined length: encapsulated)."""
    if "PixelData" not in ds:
        return None
    elem = ds.get_item(0x7FE00010, keep_deferred=True)  # never read the pixels here
    if getattr(elem, "value", None) is None and hasattr(elem, "length"):
        return None if elem.length == 0xFFFFFFFF else int(elem.length)
    value = ds.PixelData
    return len(value) if isinstance(value, bytes | bytearray) else None


def check_pixel_header(ds: Dataset, max_pixels: int) -> None:
    """Cheap consistency checks of the image attributes, without decoding any pixel, so
    that a broken instance is refused at C-STORE time instead of failing later."""
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise BadInstance("no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        samples = int(ds.get("SamplesPerPixel", 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise BadInstance(f"image attributes missing or unreadable: {exc}") from None
    try:
        check_size(ds, max_pixels)
    except ConversionError as exc:
        raise BadInstance(str(exc)) from None
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric and photometric not in PHOTOMETRICS:
        raise BadInstance(f"unknown photometric interpretation {photometric[:32]!r}")
    if allocated not in (1, 8, 16, 32) or not 1 <= stored <= allocated or samples not in (1, 3):
        raise BadInstance(f"inconsistent pixel description: BitsAllocated {allocated}, "
                          f"BitsStored {stored}, SamplesPerPixel {samples}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    actual = _pixel_length(ds)
    if syntax is not None and not syntax.is_compressed and actual is not None:
        # 4:2:2 keeps two samples per pixel (Y Y Cb Cr per pair), not three; 1-bit
        # pixels are packed, a frame's bits rounded up to a whole byte at the end.
        per_pixel = 2 if photometric in ("YBR_FULL_422", "YBR_PARTIAL_422") else samples
        expected = -(-rows * cols * frames * per_pixel * allocated // 8)
        if actual < expected:
            raise BadInstance(f"pixel data holds {actual} bytes, {rows}x{cols}x{frames} "
                              f"pixels of {allocated} bits need {expected}")


def _record(settings: Settings, db: Database, store: ImageStore, ds: Dataset,
            calling_aet: str, sop_class: str | None, put_new: Callable[[str], bool],
            replace: Callable[[str], None]) -> Recorded:
    declared = str(ds.get("SOPClassUID", ""))
    if sop_class is not None and declared and declared != sop_class:
        raise WrongSOPClass(f"dataset SOP Class {declared} was sent as {sop_class}")
    if declared not in storage_classes(settings):
        raise WrongSOPClass(f"SOP Class {declared or '(missing)'} is not accepted")
    exam, patient = extract(
        ds, regions=settings.regions, calling_aet=calling_aet,
        priority=settings.priority_for(calling_aet),
        read_untagged=settings.processing.untagged == "read",
    )
    check_pixel_header(ds, settings.dicom.max_pixels)
    mine = repo.identity_of(exam, patient)
    stored = db.read_sync(repo.exam_identity, exam.uid)
    if stored is None:
        if put_new(exam.uid):  # this copy is the stored one: its row follows
            created = db.write_sync(repo.insert_received, exam, patient)
            return Recorded(Outcome.STORED if created else Outcome.DUPLICATE, exam)
        # Another copy was stored first: a sender at the same moment (its row follows
        # in a moment), or an attempt that died before its row.
        stored = db.read_sync(repo.exam_identity, exam.uid)
        if stored is None:
            stored = _stored_identity(settings, store, exam.uid)
            if stored is None or (stored != mine and (
                    store.age(exam.uid, "dcm") or 0.0) >= ORPHAN_SECONDS):
                replace(exam.uid)  # gone, unreadable or an orphan nobody was answered for
                stored = mine
    if stored is not None and stored != mine:
        raise ConflictingInstance(exam.uid, [f for f, a, b in zip(
            repo.IDENTITY_FIELDS, stored, mine, strict=True) if a != b])
    # The same identity: the row may still be missing (the stored copy's attempt died
    # before writing it); this copy describes the stored one equally.
    created = db.write_sync(repo.insert_received, exam, patient)
    return Recorded(Outcome.STORED if created else Outcome.DUPLICATE, exam)


def _stored_identity(settings: Settings, store: ImageStore,
                     uid: str) -> tuple[str, ...] | None:
    """The identity of the stored copy of ``uid`` read from its header; None when it is
    gone or unreadable."""
    data = store.get(uid, "dcm")
    if data is None:
        return None
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        return repo.identity_of(*extract(ds, regions=settings.regions))
    except Exception:  # noqa: BLE001 - an unreadable stored copy identifies nothing
        return None


def record_instance(settings: Settings, db: Database, store: ImageStore, ds: Dataset,
                    encoded: bytes, *, calling_aet: str = "",
                    sop_class: str | None = None) -> Recorded:
    """Durably records one instance given as a dataset and its encoded file bytes;
    returns whether it was new or a duplicate. Raises as the module docstring says."""
    return _record(settings, db, store, ds, calling_aet, sop_class,
                   lambda uid: store.put_new(uid, "dcm", encoded),
                   lambda uid: store.put(uid, "dcm", encoded))


def record_file(settings: Settings, db: Database, store: ImageStore, path: Path, *,
                calling_aet: str = "", sop_class: str | None = None,
                transfer_syntax: str | None = None) -> Recorded:
    """Durably records the DICOM file at ``path`` (pynetdicom's streamed copy of a
    C-STORE). Only the header is parsed; the file itself is moved into the store, so a
    large instance is never held in memory (a deflated one is inflated there first:
    ``dicom.deflate``). ``transfer_syntax``, when the caller knows it (the presentation
    context's), spares reading the file meta to find out. A copy that is not stored stays
    at ``path`` (the caller removes it)."""
    try:
        # a deflated one is stored inflated: its readers never inflate it in memory
        if transfer_syntax in (None, DeflatedExplicitVRLittleEndian):
            inflate_file(path, largest_data_set(settings.dicom.max_pixels))
        ds = dcmread(path, defer_size=4096)  # large values (pixels) stay on disk
    except (BadInstance, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means "cannot understand"
        raise BadInstance(f"unreadable dataset: {type(exc).__name__}: {str(exc)[:200]}") \
            from None
    return _record(settings, db, store, ds, calling_aet, sop_class,
                   lambda uid: store.put_file_new(uid, "dcm", path),
                   lambda uid: store.put_file(uid, "dcm", path))
