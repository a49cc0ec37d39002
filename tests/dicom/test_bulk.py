"""`xrayvision import` on a folder mixing good, duplicate, ignored and broken files."""

import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from support.xrays import make_xray, write

XRAYVISION = Path(sys.executable).parent / "xrayvision"


def test_import_summary(tmp_path):
    src = tmp_path / "in"
    chest = write(make_xray(seed=1), src / "a" / "chest.dcm")
    write(make_xray(seed=2, body_part="KNEE", description="Genunchi"), src / "a" / "b" / "knee.dcm")
    (src / "copy.dcm").write_bytes(chest.read_bytes())  # duplicate
    write(make_xray(seed=3, body_part="", description="Unknown"), src / "unknown.dcm")
    (src / "notes.txt").write_text("not DICOM")
    bad = make_xray(seed=4)
    bad.PixelData = bad.PixelData[:10]
    write(bad, src / "short.dcm")
    env = {"PATH": "/usr/bin:/bin", "XRAYVISION_DICOM_CONVERT_WORKERS": "1"}
    subprocess.run([str(XRAYVISION), "migrate"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    result = subprocess.run([str(XRAYVISION), "import", "in"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1  # something failed
    lines = result.stdout.splitlines()
    assert "imported: 2" in lines
    assert "duplicates: 1" in lines
    assert "ignored (no region rule matched): 1" in lines
    assert "failed: 2" in lines
    assert any(line.startswith("  in/notes.txt: not a DICOM file") for line in lines)
    assert any(line.startswith("  in/short.dcm: pixel data holds 10 bytes") for line in lines)
    assert "importing: 6/6" in result.stderr

    again = subprocess.run([str(XRAYVISION), "import", str(chest)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "duplicates: 1" in again.stdout.splitlines()
    assert dcmread(chest).SOPInstanceUID in (tmp_path / "data" / "xrayvision.db").read_bytes() \
        .decode("latin-1")


def test_import_of_a_missing_path(tmp_path):
    result = subprocess.run([str(XRAYVISION), "import", "nope"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no such file or folder: nope" in result.stderr


def test_import_of_bare_data_sets_into_a_new_data_folder(tmp_path):
    """No DICM prefix, no file meta (an old archive's export); a fresh folder (--migrate)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = make_xray(seed=9)
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    (tmp_path / "bare.dcm").write_bytes(buf.getvalue())
    (tmp_path / "text.dcm").write_text("(0008,0018) 1.2.3\n")  # not a data set either
    env = {"PATH": "/usr/bin:/bin", "XRAYVISION_DICOM_CONVERT_WORKERS": "1"}
    refused = subprocess.run([str(XRAYVISION), "import", "bare.dcm"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "import --migrate" in refused.stderr
    result = subprocess.run([str(XRAYVISION), "import", "--migrate", "bare.dcm", "text.dcm"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert "imported: 1" in lines and "failed: 1" in lines, result.stdout + result.stderr
    assert any(line.startswith("  text.dcm: not a DICOM file") for line in lines)
