import subprocess

import cv2
import imagecodecs
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from support.xrays import SECONDARY_CAPTURE, make_xray, write
from xrayvision.dicom import convert
from xrayvision.dicom.convert import (
    ConversionError,
    ConvertOptions,
    Window,
    adaptive_gamma,
    apply_window,
    chosen_window,
    convert_bytes,
    encode_png,
    fit,
    to_display,
)

CASES = {
    "dx12-window": dict(bits=12, window=(2000, 3000)),
    "dx14-mono1": dict(bits=14, photometric="MONOCHROME1", window=(8000, 12000)),
    "cr16-no-window": dict(bits=16, modality="CR", sop_class="1.2.840.10008.5.1.4.1.1.1"),
    "dx16-signed": dict(bits=16, signed=True),
    "dx12-rescale": dict(bits=12, rescale=(2.0, -1024.0)),
    "dx12-multiframe": dict(bits=12, frames=3, window=(2000, 3000)),
    "dx10-of-16": dict(bits=10, rows=300, cols=320),
}


def dcmj2pnm(path, window: Window, out):
    subprocess.run(["dcmj2pnm", "--write-png", "+Ww", str(window.center), str(window.width),
                    "--frame", "1", str(path), str(out)], check=True, capture_output=True)
    return cv2.imread(str(out), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("name", CASES)
def test_matches_dcmtk_with_the_same_window(tmp_path, name):
    path = write(make_xray(**CASES[name]), tmp_path / f"{name}.dcm")
    ds = dcmread(path)
    ours = to_display(ds)
    theirs = dcmj2pnm(path, chosen_window(ds), tmp_path / "out.png")
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() <= 1.0


def _jpeg_lossless(src, dst):
    subprocess.run(["dcmcjpeg", "+e1", str(src), str(dst)], check=True, capture_output=True)


def _jpeg_ls(src, dst):
    subprocess.run(["dcmcjpls", "+el", str(src), str(dst)], check=True, capture_output=True)


def _pydicom(syntax):
    def compress(src, dst):
        ds = dcmread(src)
        ds.compress(syntax)
        ds.save_as(dst)
    return compress


def _deflated(src, dst):
    ds = dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(dst)


@pytest.mark.parametrize("encode", [_jpeg_lossless, _jpeg_ls, _pydicom(JPEG2000Lossless),
                                    _pydicom(RLELossless), _deflated],
                         ids=["jpeg-lossless-sv1", "jpeg-ls", "jpeg2000", "rle", "deflated"])
def test_compressed_transfer_syntaxes_decode_to_the_same_image(tmp_path, encode):
    raw = write(make_xray(bits=12, window=(2000, 3000)), tmp_path / "raw.dcm")
    packed = tmp_path / "packed.dcm"
    encode(raw, packed)
    assert dcmread(packed).file_meta.TransferSyntaxUID != dcmread(raw).file_meta.TransferSyntaxUID
    assert np.array_equal(to_display(dcmread(packed)), to_display(dcmread(raw)))


def test_monochrome1_is_inverted():
    mono2 = to_display(make_xray(bits=12, window=(2000, 3000), seed=5))
    mono1 = to_display(make_xray(bits=12, window=(2000, 3000), seed=5, photometric="MONOCHROME1"))
    assert np.abs(mono1.astype(int) - (255 - mono2.astype(int))).max() <= 1


def test_padding_is_black_and_excluded_from_the_window():
    padded = to_display(make_xray(bits=12, padding=0, seed=3))
    assert (padded[:, :8] == 0).all()
    assert padded[:, 8:].max() == 255


def test_window_index_picks_the_second_window():
    ds = make_xray(bits=12)
    ds.WindowCenter, ds.WindowWidth = [2000, 1000], [3000, 500]
    assert chosen_window(ds, ConvertOptions(window_index=1)) == Window(1000, 500)
    assert chosen_window(ds, ConvertOptions(window_index=7)) == Window(1000, 500)
    assert chosen_window(ds) == Window(2000, 3000)


def test_rgb_secondary_capture_becomes_grey():
    img = to_display(make_xray(rgb=True, sop_class=SECONDARY_CAPTURE, modality="OT"))
    assert img.ndim == 2 and img.dtype == np.uint8


def test_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    ds = make_xray(bits=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = list(np.linspace(0, 255, 4096).astype(np.uint16))
    ds.VOILUTSequence = [item]
    out = to_display(ds)
    assert out.dtype == np.uint8 and 0 < out.mean() < 255
    assert chosen_window(ds) is None


def test_apply_window_follows_the_dicom_formula():
    values = np.array([0.0, 1499.5, 2000.0, 3499.0, 4000.0])
    out = apply_window(values, Window(2000, 3000))
    assert out[0] == 0 and out[-1] == 255
    assert abs(out[2] - 127.54) < 0.1


def test_gamma_and_fit():
    dark = np.full((10, 10), 40, np.uint8)
    assert abs(int(adaptive_gamma(dark).mean()) - 128) <= 1
    black = np.zeros((10, 10), np.uint8)
    assert np.array_equal(adaptive_gamma(black), black)  # identity when the mean is 0
    big = np.zeros((3000, 2000), np.uint8)
    assert fit(big, 1024).shape == (1024, 683)
    assert fit(big, 0).shape == (3000, 2000)
    assert fit(np.zeros((100, 50), np.uint8), 1024).shape == (100, 50)  # never upscaled


def test_convert_bytes_makes_a_png_of_the_model_size(tmp_path):
    path = write(make_xray(rows=1500, cols=1200, bits=12), tmp_path / "x.dcm")
    result = convert_bytes(path.read_bytes(), ConvertOptions(max_side=512))
    assert (result.height, result.width) == (512, 410)
    decoded = cv2.imdecode(np.frombuffer(result.png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (512, 410)


@pytest.mark.parametrize("mutate,message", [
    (lambda ds: ds.__delattr__("PixelData"), "no pixel data"),
    (lambda ds: setattr(ds, "Rows", 0), "not an image"),
    (lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000)), "exceeds the limit"),
    (lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]), "cannot be decoded"),
])
def test_bad_images_raise_conversion_error(tmp_path, mutate, message):
    ds = make_xray()
    mutate(ds)
    path = write(ds, tmp_path / "bad.dcm")
    with pytest.raises(ConversionError, match=message):
        convert_bytes(path.read_bytes())


def test_not_dicom_at_all():
    with pytest.raises(ConversionError):
        convert_bytes(b"\x00" * 10)


@pytest.mark.parametrize("level", range(10))
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (257, 301)])
def test_png_round_trips_at_every_level(level, shape):
    img = np.random.default_rng(level).integers(0, 256, shape, dtype=np.uint8)
    png = encode_png(img, level)
    # OpenCV's and imagecodecs' libpng both check the chunk CRCs and the zlib stream.
    assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
                          .reshape(shape), img)
    assert np.array_equal(imagecodecs.png_decode(png).reshape(shape), img)


def test_png_fast_levels_split_large_data_over_several_idat_chunks(monkeypatch):
    monkeypatch.setattr(convert, "_IDAT_MAX", 1000)
    img = to_display(make_xray(bits=12))
    png = encode_png(img, 1)
    assert png.count(b"IDAT") > 5
    assert np.array_equal(imagecodecs.png_decode(png), img)


def test_png_of_a_non_contiguous_view():
    img = np.arange(60 * 40, dtype=np.uint32).reshape(60, 40).astype(np.uint8)[::2, ::3]
    assert np.array_equal(imagecodecs.png_decode(encode_png(img, 1)), img)
