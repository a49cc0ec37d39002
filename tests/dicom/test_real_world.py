"""DICOM as real senders and modalities make it: the public files pydicom ships, files
DCMTK and imagecodecs make, and damage done to them on purpose. Each file's expected
outcome is stated: converted (and, where DCMTK renders it, like ``dcmj2pnm``), or refused
with its reason; nothing else in the association is affected."""

import asyncio
import struct
import subprocess
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import HTJ2KLossless

from support.xrays import make_xray, write
from xrayvision.db import repo
from xrayvision.db.models import ERROR, IGNORE, QUEUED, AuditLog
from xrayvision.dicom.convert import ConversionError, to_display
from xrayvision.dicom.ingest import check_pixel_header

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def shipped(name: str) -> Path:
    return PYDICOM_FILES / name


def dcmj2pnm(path: Path, out: Path, *args: str) -> np.ndarray:
    """DCMTK's rendering, 8-bit greyscale (colour reduced to luminance as we do)."""
    subprocess.run(["dcmj2pnm", "--write-8-bit-pnm", *args, str(path), str(out)], check=True,
                   capture_output=True)
    image = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


def truncated(source: Path, out: Path, uid: str | None = None) -> Path:
    """``source`` with its first frame's codestream cut in half (as a transfer or a disk
    that gave out would leave it), under ``uid`` when given."""
    ds = dcmread(source)
    if uid is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    frames = list(generate_frames(ds.PixelData,
                                  number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    ds.PixelData = encapsulate([frames[0][: len(frames[0]) // 2], *frames[1:]])
    ds.save_as(out)
    return out


def all_un(ds: pydicom.Dataset, path: Path) -> Path:
    """``ds`` written with every element's VR as UN (explicit VR little endian), as some
    tools write a data set whose VRs they did not know."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    raw, out, i = buf.getvalue(), bytearray(), 0
    while i < len(raw):
        group, element, length = struct.unpack_from("<HHI", raw, i)
        out += struct.pack("<HH", group, element) + b"UN\0\0" + struct.pack("<I", length)
        out += raw[i + 8:i + 8 + length]
        i += 8 + length
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + bytes(out))
    return path


# --- conversion (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "args", "least"), [
    ("JPEG-lossy.dcm", ("--min-max-window",), 0.98),  # 12-bit JPEG Extended; pylibjpeg fails
    ("JPGExtended.dcm", ("--min-max-window",), 0.98),
    ("examples_palette.dcm", (), 0.999),  # PALETTE COLOR through its LUTs
    ("SC_ybr_full_422_uncompressed.dcm", (), 0.999),
    ("SC_rgb_rle_16bit.dcm", (), 0.999),  # 16-bit RGB: not cut to its low byte
    ("rtdose_1frame.dcm", ("--min-max-window",), 0.999),  # 32-bit pixels
    ("CT_small.dcm", ("--min-max-window",), 0.99),  # signed, rescaled
    ("ExplVR_BigEnd.dcm", (), 0.999),  # RGB, planar configuration 1, big endian
    ("SC_rgb_jpeg_dcmtk.dcm", (), 0.999),  # YBR_FULL in JPEG baseline
    ("liver_1frame.dcm", ("--min-max-window",), 0.999),  # 1-bit
])
def test_shipped_files_render_as_dcmtk_does(tmp_path, name, args, least):
    ours = to_display(dcmread(shipped(name)))
    theirs = dcmj2pnm(shipped(name), tmp_path / "ref.pgm", *args)
    # the percentile window we use differs from a min-max one by a few grey levels
    assert correlation(ours, theirs) >= least


# JPEG 2000 files among them (GDCMJ2K_TextGBR.dcm: YBR_RCT) have no DCMTK rendering to
# compare with (DCMTK has no JPEG 2000 decoder): that they convert whole is checked here.
@pytest.mark.parametrize("name", [
    "GDCMJ2K_TextGBR.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "JPEG2000.dcm",
    "693_J2KI.dcm", "examples_jpeg2k.dcm",
])
def test_a_truncated_codestream_is_refused_not_rendered(tmp_path, name):
    to_display(dcmread(shipped(name)))  # whole, it converts
    cut = truncated(shipped(name), tmp_path / "cut.dcm")
    with pytest.raises(ConversionError, match="truncated"):
        to_display(dcmread(cut))


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_a_window_or_a_voi_lut_applies_as_dcmtk_applies_it(tmp_path, photometric):
    windowed = make_xray(bits=12, seed=6, photometric=photometric, window=(1800, 2400))
    ours = to_display(windowed)
    theirs = dcmj2pnm(write(windowed, tmp_path / "w.dcm"), tmp_path / "w.pgm", "--use-window", "1")
    assert correlation(ours, theirs) >= 0.999
    with_lut = make_xray(bits=12, seed=6, photometric=photometric)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [min(4095, int(4095 * (v / 4095) ** 0.5)) for v in range(4096)]
    item["LUTData"].VR = "US"
    with_lut.VOILUTSequence = [item]
    ours = to_display(with_lut)
    theirs = dcmj2pnm(write(with_lut, tmp_path / "l.dcm"), tmp_path / "l.pgm",
                      "--use-voi-lut", "1")
    assert correlation(ours, theirs) >= 0.999


def test_htj2k_converts(tmp_path):
    ds = make_xray(bits=12, seed=3)
    pixels = ds.pixel_array
    reference = to_display(ds)
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(pixels)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    assert np.array_equal(to_display(ds), reference)


def test_a_range_under_one_after_rescale_keeps_its_contrast():
    ds = make_xray(bits=12, seed=5, rescale=(0.0001, 0.0))  # values 0 .. 0.41 (RT portal)
    shown = to_display(ds)
    assert shown.std() > 30  # not one flat white (or black) field
    assert correlation(shown, ds.pixel_array) > 0.95


def test_uncompressed_ybr_full_422_passes_the_size_check():
    ds = dcmread(shipped("SC_ybr_full_422_uncompressed.dcm"))
    check_pixel_header(ds, 50_000_000)  # 2 bytes per pixel, not 3
    ds.PixelData = ds.PixelData[:-2]
    with pytest.raises(ValueError, match="pixel data holds"):
        check_pixel_header(ds, 50_000_000)


# --- through the SCP: one association, each instance its own outcome ---------------------


CUT_UID = "1.2.826.0.1.3680043.8.498.77"  # JPGExtended.dcm's image (JPEG-lossy.dcm's UID)


async def test_one_association_of_real_world_files(ingest, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    good = [write(make_xray(seed=i), folder / f"good{i}.dcm") for i in range(2)]
    leading_zero = write(make_xray(uid="999.999.01.23.45.6789", seed=7), folder / "lz.dcm")
    garbled = all_un(make_xray(seed=8), folder / "un.dcm")
    files = [good[0], shipped("JPEG-lossy.dcm"), garbled,
             truncated(shipped("JPGExtended.dcm"), folder / "cut.dcm", CUT_UID),
             shipped("SC_ybr_full_422_uncompressed.dcm"), leading_zero, good[1]]
    result = await asyncio.to_thread(
        subprocess.run, ["dcmsend", "-v", "--no-uid-checks", "-aec", "XRAYVISION", "127.0.0.1",
                         str(ingest.port), *map(str, files)],
        capture_output=True, text=True, timeout=120)
    responses = [line for line in result.stderr.splitlines() if "C-STORE Response" in line]
    assert len(responses) == len(files), result.stderr  # the association went on
    assert ["Success" in r for r in responses] == [True, True, False, True, True, True, True]
    assert "SOPClassNotSupported" in responses[2]
    refusals = await ingest.db.read(lambda session: [
        (r.username, r.target, r.detail) for r in session.query(AuditLog)
        .filter(AuditLog.action == "dicom.refused")])
    # found later, with who and why (the UIDs dcmsend read from the UN elements are junk)
    assert len(refusals) == 1 and refusals[0][0] == "DCMSEND"
    assert refusals[0][2].startswith("0x0122: C-STORE names SOP Class")
    counts = await ingest.converted()
    # queued: the two DX chests, the leading-zero UID's, and the untagged YBR image
    # (region "unknown"); ignored: JPEG-lossy.dcm, a whole-body bone scan
    assert counts[QUEUED] == 4 and counts[ERROR] == 1 and counts[IGNORE] == 1
    cut = await ingest.db.read(repo.get_exam, CUT_UID)
    assert cut.exam.status == ERROR and "truncated" in cut.exam.error
    assert cut.exam.reason_code == "decode_failed"
    assert ingest.store.get(CUT_UID, "png") is None  # no image for the model or a reader
    stored = await ingest.db.read(repo.get_exam, "999.999.01.23.45.6789")  # as received
    assert stored is not None and stored.exam.status == QUEUED
    for name, region in (("JPEG-lossy.dcm", ""), ("SC_ybr_full_422_uncompressed.dcm", "unknown")):
        uid = dcmread(shipped(name)).SOPInstanceUID
        assert ingest.store.get(uid, "png") is not None  # converted
        assert (await ingest.db.read(repo.get_exam, uid)).exam.region == region
    incoming = await asyncio.to_thread(
        lambda: [p for p in Path(ingest.settings.server.data_dir).rglob("*")
                 if "incoming" in str(p) and p.is_file()])
    assert incoming == []  # the refused instance's file went with its refusal


def test_32_bit_pixels_keep_their_padding_black():
    ds = make_xray(bits=12, seed=4, padding=4095)  # padding brighter than any pixel
    pixels = ds.pixel_array.astype(np.uint32) * 1000  # more values than a lookup table takes
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelPaddingValue = 4095 * 1000
    ds.PixelData = pixels.tobytes()
    shown = to_display(ds)
    assert shown[:, :8].max() == 0 and shown[:, 8:].std() > 30
