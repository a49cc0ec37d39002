"""The public corpus PyPI's ``pydicom-data`` ships (68 files from real scanners and
other projects: CR, MR, CT, US, SC; every transfer syntax; big endian; palettes; LUTs;
damaged files). Each file's outcome is stated: rendered like DCMTK's ``dcmj2pnm``, or,
where DCMTK cannot decode it (JPEG 2000, 32-bit RGB, one of GDCM's palettes), like the
same image in another encoding; or refused with its reason."""

import asyncio
import subprocess
import sys
from pathlib import Path

import cv2
import data_store
import numpy as np
import pytest
from pydicom import dcmread

from xrayvision.dicom.bulk import read_dataset
from xrayvision.dicom.convert import ConversionError, to_display

from .conftest import ingest_settings, running_ingest
from .test_real_world import correlation, dcmj2pnm

CORPUS = Path(data_store.__file__).parent / "data"
XRAYVISION = Path(sys.executable).parent / "xrayvision"

MIN_MAX = ("--min-max-window",)
WINDOW = ("--use-window", "1")

# name -> dcmj2pnm arguments (the window our conversion uses: the file's, or none)
AS_DCMTK = {
    "693_UNCI.dcm": WINDOW, "693_UNCR.dcm": WINDOW,
    "JPEG-LL.dcm": MIN_MAX, "JPEG2000_UNC.dcm": MIN_MAX,
    "JPGLosslessP14SV1_1s_1f_8b.dcm": WINDOW,
    # overlays are not burnt into what the model reads
    "MR-SIEMENS-DICOM-WithOverlays.dcm": (*WINDOW, "--no-overlays"),
    "MR2_UNCI.dcm": WINDOW, "MR2_UNCR.dcm": WINDOW,
    "OBXXXX1A.dcm": (), "OBXXXX1A_2frame.dcm": (), "OBXXXX1A_rle.dcm": (),
    "OBXXXX1A_rle_2frame.dcm": (), "OT-PAL-8-face.dcm": (),
    "RG1_UNCI.dcm": WINDOW, "RG1_UNCR.dcm": WINDOW,  # CR, MONOCHROME1, 15 bits
    "RG3_UNCI.dcm": WINDOW, "RG3_UNCR.dcm": WINDOW,
    "SC_rgb.dcm": (), "SC_rgb_16bit.dcm": (), "SC_rgb_16bit_2frame.dcm": (),
    "SC_rgb_2frame.dcm": (), "SC_rgb_dcmtk_ebcr_dcmd.dcm": (),
    "SC_rgb_dcmtk_ebcyn1_dcmd.dcm": (), "SC_rgb_dcmtk_ebcyn2_dcmd.dcm": (),
    "SC_rgb_dcmtk_ebcynp_dcmd.dcm": (), "SC_rgb_dcmtk_ebcys2_dcmd.dcm": (),
    "SC_rgb_dcmtk_ebcys4_dcmd.dcm": (), "SC_rgb_expb.dcm": (), "SC_rgb_expb_16bit.dcm": (),
    "SC_rgb_expb_16bit_2frame.dcm": (), "SC_rgb_expb_2frame.dcm": (),
    "SC_rgb_gdcm2k_uncompressed.dcm": (), "SC_ybr_full_uncompressed.dcm": (),
    "US1_UNCI.dcm": (), "US1_UNCR.dcm": (), "bad_sequence.dcm": WINDOW,
    "color-pl.dcm": (), "color-px.dcm": (), "color3d_jpeg_baseline.dcm": (),
    "eCT_Supplemental.dcm": MIN_MAX, "emri_small.dcm": MIN_MAX, "emri_small_RLE.dcm": MIN_MAX,
    "liver.dcm": MIN_MAX, "liver_expb.dcm": MIN_MAX,  # 1-bit segmentation
    "mlut_18.dcm": MIN_MAX,  # Modality LUT Sequence
    "vlut_04.dcm": ("--use-voi-lut", "1"),  # VOI LUT Sequence
}
# name -> the same image in an encoding DCMTK renders (or that the first row checks)
AS_TWIN = {
    "693_J2KR.dcm": "693_UNCR.dcm", "MR2_J2KI.dcm": "MR2_UNCI.dcm",
    "MR2_J2KR.dcm": "MR2_UNCR.dcm", "RG1_J2KI.dcm": "RG1_UNCI.dcm",
    "RG1_J2KR.dcm": "RG1_UNCR.dcm", "RG3_J2KI.dcm": "RG3_UNCI.dcm",
    "RG3_J2KR.dcm": "RG3_UNCR.dcm", "US1_J2KI.dcm": "US1_UNCI.dcm",
    "US1_J2KR.dcm": "US1_UNCR.dcm", "SC_rgb_32bit.dcm": "SC_rgb.dcm",
    "SC_rgb_32bit_2frame.dcm": "SC_rgb_2frame.dcm", "SC_rgb_expb_32bit.dcm": "SC_rgb.dcm",
    "SC_rgb_expb_32bit_2frame.dcm": "SC_rgb_2frame.dcm",
    "OBXXXX1A_expb.dcm": "OBXXXX1A.dcm", "OBXXXX1A_expb_2frame.dcm": "OBXXXX1A.dcm",
    "emri_small_big_endian.dcm": "emri_small.dcm",
    "emri_small_jpeg_2k_lossless.dcm": "emri_small.dcm",
    "emri_small_jpeg_ls_lossless.dcm": "emri_small.dcm",
    "gdcm-US-ALOKA-16_big.dcm": "gdcm-US-ALOKA-16.dcm",
}
# name -> what the refusal says
REFUSED = {
    "emri_small_jpeg_2k_lossless_too_short.dcm": "image size unreadable",  # cut in its header
}
# converted, with nothing to compare against (DCMTK refuses them: see the notes)
CONVERTED_ONLY = {
    "gdcm-US-ALOKA-16.dcm": "16-bit palette; dcmj2pnm: 'Invalid element value'",
    "explicit_VR-UN.dcm": "elements in VR UN, JPEG 2000; no twin",
}


def shown(name: str) -> np.ndarray:
    ds, _ = read_dataset((CORPUS / name).read_bytes())  # OT-PAL-8-face.dcm has no meta
    return to_display(ds)


def test_every_file_of_the_corpus_has_a_stated_outcome():
    stated = set(AS_DCMTK) | set(AS_TWIN) | set(REFUSED) | set(CONVERTED_ONLY)
    assert stated == {p.name for p in CORPUS.glob("*.dcm")}


@pytest.mark.parametrize("name", sorted(AS_DCMTK))
def test_rendered_as_dcmtk_renders_it(tmp_path, name):
    ours = shown(name)
    theirs = dcmj2pnm(CORPUS / name, tmp_path / "ref.pgm", *AS_DCMTK[name])
    # a percentile window (ours, without a window in the file) against a min-max one
    assert correlation(ours, theirs) >= (0.98 if AS_DCMTK[name] == MIN_MAX else 0.999)


@pytest.mark.parametrize("name", sorted(AS_TWIN))
def test_rendered_as_its_twin_in_another_encoding(name):
    assert correlation(shown(name), shown(AS_TWIN[name])) >= 0.999


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_its_reason(name):
    with pytest.raises(ConversionError, match=REFUSED[name]):
        shown(name)


@pytest.mark.parametrize("name", sorted(CONVERTED_ONLY))
def test_converted(name):
    image = shown(name)
    assert image.dtype == np.uint8 and image.std() > 5  # an image, not a flat field
    assert dcmread(CORPUS / name, stop_before_pixels=True).Rows == image.shape[0]


def test_the_palette_of_8_bit_values_in_16_bit_words_is_not_black():
    assert cv2.meanStdDev(shown("OBXXXX1A_expb.dcm"))[1][0][0] > 10


EVERY_CLASS = ",".join((  # the corpus's SOP classes beyond CR, DX and SC
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.6",
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.66.4"))


def test_the_whole_corpus_through_import(tmp_path):
    """One batch: each file its own outcome, none taking another down."""
    env = {"PATH": "/usr/bin:/bin", "XRAYVISION_DICOM_CONVERT_WORKERS": "1",
           "XRAYVISION_DICOM_EXTRA_SOP_CLASSES": EVERY_CLASS}
    result = subprocess.run([str(XRAYVISION), "import", "--migrate", str(CORPUS)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    counts = {key: int(value) for key, _, value in (
        line.partition(": ") for line in result.stdout.splitlines()
        if not line.startswith(" ") and ": " in line)}
    failures = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert len(failures) == counts["failed"] == 2, result.stdout
    # a SOP Instance UID of hex digits (not a UID: refused, it would name a file), and a
    # file cut within its header
    assert "bad_sequence.dcm: SOP Instance UID missing or invalid" in failures[0]
    assert "emri_small_jpeg_2k_lossless_too_short.dcm: SOP Class (missing)" in failures[1]
    total = counts["imported"] + counts["duplicates"] + counts["ignored (no region rule matched)"]
    assert total == len(list(CORPUS.glob("*.dcm"))) - 2
    assert counts["duplicates"] > 0  # the same images in several encodings share their UIDs


async def test_the_whole_corpus_through_the_scp_in_one_association(tmp_path, sqlite_db):
    """dcmsend, one association, a presentation context per SOP class and transfer
    syntax: each instance its own status, the association never aborted."""
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_EXTRA_SOP_CLASSES=EVERY_CLASS)
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        result = await asyncio.to_thread(subprocess.run, [
            "dcmsend", "-v", "--no-uid-checks", "--no-halt", "-aec", "XRAYVISION", "127.0.0.1",
            str(ingest.port), "--scan-directories", str(CORPUS)],
            capture_output=True, text=True, timeout=600)
        counts = await ingest.converted(wait=300)
    log = result.stderr
    responses = [line for line in log.splitlines() if "Received C-STORE Response" in line]
    refused = [line for line in responses if "Success" not in line]
    # dcmsend itself leaves out the file without meta and the one cut in its header
    assert "OT-PAL-8-face.dcm" in log and "emri_small_jpeg_2k_lossless_too_short" in log
    assert len(responses) == len(list(CORPUS.glob("*.dcm"))) - 2, log
    lines = log.splitlines()
    context = [lines[i - 4:i + 1] for i, line in enumerate(lines)
               if "Received C-STORE Response" in line and "Success" not in line]
    # bad_sequence.dcm: a SOP Instance UID of hex digits (0xC000); explicit_VR-UN.dcm:
    # dcmsend reads its VR UN elements as they are and names junk as the SOP class (0x0122)
    assert sorted(r.split("(", 1)[1] for r in refused) == [
        "Error: CannotUnderstand)", "Refused: SOPClassNotSupported)"], context
    assert "Peer Aborted" not in log and "Association Aborted" not in log
    assert counts["error"] == 0 and counts["none"] == 0


# DCMTK's transcoders, as a PACS or a router re-encodes what it forwards
TRANSCODERS = {
    "jpeg-lossless-sv1": ["dcmcjpeg", "+e1"],
    "jpeg-ls-lossless": ["dcmcjpls", "+el"],
    "rle": ["dcmcrle"],
    "explicit-big-endian": ["dcmconv", "+tb"],
    "implicit-little-endian": ["dcmconv", "+ti"],
    "deflated": ["dcmconv", "+td"],
}
REAL_CR = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")  # 15 and 10 bits stored, MONOCHROME1


def transcoded(tmp_path: Path, name: str, how: str) -> Path:
    out = tmp_path / f"{how}-{name}"
    subprocess.run([*TRANSCODERS[how], str(CORPUS / name), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.mark.parametrize("how", sorted(TRANSCODERS))
@pytest.mark.parametrize("name", REAL_CR)
def test_real_radiographs_transcoded_render_as_dcmtk_renders_the_original(tmp_path, name,
                                                                          how):
    path = transcoded(tmp_path, name, how)
    ours = to_display(read_dataset(path.read_bytes())[0])
    theirs = dcmj2pnm(CORPUS / name, tmp_path / "ref.pgm", *WINDOW)
    assert correlation(ours, theirs) >= 0.999


async def test_real_radiographs_transcoded_through_the_scp_in_one_association(tmp_path,
                                                                               sqlite_db):
    """Every transcoding of the real CRs (each its own transfer syntax, the same SOP
    Instance UIDs) in one dcmsend association: each accepted; one exam per instance."""
    folder = tmp_path / "transcoded"
    folder.mkdir()
    for name in REAL_CR:
        for how in TRANSCODERS:
            transcoded(folder, name, how)
    settings = ingest_settings(tmp_path)
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        result = await asyncio.to_thread(subprocess.run, [
            "dcmsend", "-v", "--no-halt", "-aec", "XRAYVISION", "127.0.0.1", str(ingest.port),
            "--scan-directories", str(folder)], capture_output=True, text=True, timeout=600)
        counts = await ingest.converted(wait=300)
    responses = [line for line in result.stderr.splitlines()
                 if "Received C-STORE Response" in line]
    assert len(responses) == len(REAL_CR) * len(TRANSCODERS), result.stderr
    assert all("Success" in line for line in responses), result.stderr
    assert counts["error"] == 0 and sum(counts.values()) == len(REAL_CR)  # same UIDs
