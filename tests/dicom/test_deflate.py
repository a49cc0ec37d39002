"""Deflated data sets: stored inflated (the same data set), inflated in blocks with a
bound, so a small deflate bomb costs neither memory nor disk; received from DCMTK's
``storescu -xd`` and pydicom's own deflated test file."""

from __future__ import annotations

import asyncio
import copy
import io
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from support.xrays import deflate_bomb as bomb
from support.xrays import make_xray, write
from xrayvision.db import repo
from xrayvision.dicom.deflate import (
    DeflateError,
    data_set_offset,
    inflate_file,
    largest_data_set,
)

from .conftest import ingest_settings, running_ingest


def deflated(ds, path: Path) -> Path:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_deflated_file_is_rewritten_as_the_same_data_set(tmp_path):
    original = make_xray(bits=12, seed=5)
    path = deflated(copy.deepcopy(original), tmp_path / "x.dcm")
    assert inflate_file(path, largest_data_set(1_000_000))
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.PatientID == original.PatientID
    assert np.array_equal(ds.pixel_array, original.pixel_array)
    assert not list(tmp_path.glob("*.inflated"))
    assert not inflate_file(path, 1)  # not deflated (any more): left alone


def test_pydicoms_deflated_file_inflates_to_the_same_pixels(tmp_path):
    source = Path(get_testdata_file("image_dfl.dcm"))
    path = tmp_path / "dfl.dcm"
    path.write_bytes(source.read_bytes())
    assert inflate_file(path, largest_data_set(1_000_000))
    assert np.array_equal(dcmread(path).pixel_array, dcmread(source).pixel_array)


def test_a_bomb_is_refused_within_the_limit_holding_little(tmp_path):
    path = bomb(tmp_path / "bomb.dcm", 10000, 10000)  # 200 MB of zeros
    assert path.stat().st_size < 400_000
    before = path.read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(DeflateError, match="inflates past"):
            inflate_file(path, 50_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak
    assert path.read_bytes() == before and not list(tmp_path.glob("*.inflated"))


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_stream_is_refused(tmp_path, damage):
    path = deflated(make_xray(seed=6), tmp_path / "x.dcm")
    data = path.read_bytes()
    start = data_set_offset(path)
    if damage == "truncated":
        data = data[:start + (len(data) - start) // 2]
    else:
        data = data[:start] + b"\xff" * 64 + data[start + 64:]
    path.write_bytes(data)
    with pytest.raises(DeflateError):
        inflate_file(path, largest_data_set(1_000_000))
    assert path.read_bytes() == data


async def test_deflated_instances_from_dcmtk_are_stored_inflated(tmp_path, sqlite_db):
    xray = write(make_xray(bits=12, seed=7), tmp_path / "dx.dcm")
    sc = tmp_path / "dfl.dcm"
    await asyncio.to_thread(shutil.copyfile, get_testdata_file("image_dfl.dcm"), sc)
    async with running_ingest(ingest_settings(tmp_path), sqlite_db, tmp_path) as ingest:
        # storescu deflates the DX file on the fly; the SC one is deflated already
        result = await ingest.storescu(xray, sc, args=("-xd",))
        assert result.returncode == 0, result.stderr
        for source in (xray, sc):
            original = dcmread(source)
            stored = dcmread(io.BytesIO(await asyncio.to_thread(
                ingest.store.get, original.SOPInstanceUID, "dcm")))
            assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert np.array_equal(stored.pixel_array, original.pixel_array)
        counts = await ingest.converted()
        assert counts["error"] == 0


async def test_a_bomb_over_the_wire_is_refused(tmp_path, sqlite_db):
    path = bomb(tmp_path / "bomb.dcm", 4000, 4000)  # 32 MB inflated, 16 M pixels
    settings = ingest_settings(tmp_path, XRAYVISION_DICOM_MAX_PIXELS="1000000")
    async with running_ingest(settings, sqlite_db, tmp_path) as ingest:
        result = await ingest.storescu(path, args=("-xd", "-v"))
        responses = [line for line in result.stderr.splitlines()
                     if "Received Store Response" in line]
        assert len(responses) == 1 and "CannotUnderstand" in responses[0], result.stderr
        assert (await ingest.db.read(repo.queue_counts))["none"] == 0
        assert not list(ingest.store.root.rglob("*.dcm"))
