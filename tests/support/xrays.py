"""Synthetic X-ray DICOM instances for tests: DX and CR, 12/14/16-bit, MONOCHROME1/2,
with or without window tags, signed pixels, padding, multi-frame, RGB secondary capture."""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"


def body(rows: int, cols: int, bits: int, seed: int) -> np.ndarray:
    """A body-like attenuation map with bones, texture and noise, scaled to ``bits``."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[0:rows, 0:cols]
    y = y / rows - 0.5
    x = x / cols - 0.5
    img = 0.2 + 0.5 * (((x / 0.38) ** 2 + (y / 0.45) ** 2) < 1)
    for _ in range(4):
        cx, cy = rng.uniform(-0.25, 0.25, 2)
        img = img + 0.25 * (((x - cx) / 0.05) ** 2 + ((y - cy) / 0.3) ** 2 < 1)
    img = img + rng.normal(0, 0.03, (rows, cols))
    img = np.clip(img, 0, 1)
    return (img * (2**bits - 1)).astype(np.float64)


def make_xray(*, uid: str | None = None, rows: int = 256, cols: int = 200, bits: int = 12,
              sop_class: str = DX_PRESENTATION, modality: str = "DX",
              photometric: str = "MONOCHROME2", window: tuple[float, float] | None = None,
              signed: bool = False, padding: int | None = None, frames: int = 1,
              rescale: tuple[float, float] | None = None, body_part: str = "CHEST",
              description: str = "Torace PA", view: str = "PA", patient_id: str = "1800101123456",
              patient_name: str = "Popescu^Ion", sex: str = "M", seed: int = 1,
              rgb: bool = False, transfer_syntax: str = ExplicitVRLittleEndian,
              study_date: dt.date = dt.date(2026, 11, 20), study_uid: str | None = None,
              ) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    # Derived from the instance UID: the same arguments always give the same bytes.
    ds.StudyInstanceUID = study_uid or generate_uid(entropy_srcs=[ds.SOPInstanceUID, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "series"])
    ds.AccessionNumber = "ACC123"
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = sex
    ds.StudyDate = ds.SeriesDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = "101530"
    ds.BodyPartExamined = body_part
    ds.StudyDescription = description
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.ViewPosition = view
    ds.Rows, ds.Columns = rows, cols
    if rgb:
        img = body(rows, cols, 8, seed)
        pixels = np.stack([img, img * 0.9, img * 0.8], axis=-1).astype(np.uint8)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if signed else 0
        img = body(rows, cols, bits - (1 if signed else 0), seed)
        if signed:
            img = img - 2 ** (bits - 2)
        pixels = img.astype(np.int16 if signed else np.uint16)
        if padding is not None:
            pixels[:, :8] = padding
            ds.PixelPaddingValue = padding
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
            ds.RescaleType = "US"
    if frames > 1:
        pixels = np.stack([pixels] + [np.roll(pixels, i * 7, axis=0) for i in range(1, frames)])
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def deflate_bomb(path: Path, rows: int, cols: int) -> Path:
    """A DX data set of ``rows`` x ``cols`` zero pixels (16 bits) in Deflated Explicit VR
    Little Endian, written without ever holding its pixels inflated: 200 MB of pixels
    (10000 x 10000) deflate to ~200 KB."""
    ds = make_xray(rows=8, cols=8, bits=16)
    ds.Rows, ds.Columns = rows, cols
    del ds.PixelData
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    meta = DicomBytesIO()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    length = rows * cols * 2
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        out.write(deflater.compress(head.getvalue()))
        out.write(deflater.compress(b"\xe0\x7f\x10\x00OW\0\0" + length.to_bytes(4, "little")))
        zeros = bytes(1 << 20)
        for _ in range(length >> 20):
            out.write(deflater.compress(zeros))
        out.write(deflater.compress(bytes(length & ((1 << 20) - 1))))
        out.write(deflater.flush())
    return path

