"""The imagecodecs decoding plugin: the same pixels as pydicom's pylibjpeg plugin, bit for
bit, on files compressed by DCMTK; pydicom's plugins take over where ours declines."""

import subprocess

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from support.xrays import SECONDARY_CAPTURE, make_xray, write
from xrayvision.dicom import codecs
from xrayvision.dicom.convert import ConversionError, convert_bytes, to_display

# DCMTK's encoders and the transfer syntax each option produces.
ENCODERS = {
    "jpeg-lossless-sv1": (["dcmcjpeg", "+e1"], JPEGLosslessSV1),
    "jpeg-lossless-p14": (["dcmcjpeg", "+el", "+sv", "6"], JPEGLossless),
    "jpeg-ls-lossless": (["dcmcjpls", "+el"], JPEGLSLossless),
    "jpeg-ls-near-lossless": (["dcmcjpls", "+en", "+md", "2"], JPEGLSNearLossless),
}

IMAGES = {
    "8-bit": dict(bits=8),
    "12-bit": dict(bits=12, rows=301, cols=257),
    "14-bit-mono1": dict(bits=14, photometric="MONOCHROME1"),
    "16-bit": dict(bits=16),
    "16-bit-signed": dict(bits=16, signed=True),
}


def _eight_bit(ds):
    pixels = ds.pixel_array.astype(np.uint8)
    ds.BitsAllocated = 8
    ds.PixelData = pixels.tobytes()
    return ds


def compressed(tmp_path, image: str, encoder: str):
    ds = make_xray(**IMAGES[image])
    if IMAGES[image]["bits"] == 8:
        ds = _eight_bit(ds)
    raw = write(ds, tmp_path / "raw.dcm")
    packed = tmp_path / "packed.dcm"
    command, syntax = ENCODERS[encoder]
    subprocess.run([*command, str(raw), str(packed)], check=True, capture_output=True)
    assert dcmread(packed).file_meta.TransferSyntaxUID == syntax
    return raw, packed


def pylibjpeg_pixels(path):
    ds = dcmread(path)
    ds.pixel_array_options(decoding_plugin="pylibjpeg")
    return ds.pixel_array


def plugin_pixels(path):
    ds = dcmread(path)
    ds.pixel_array_options(decoding_plugin=codecs.PLUGIN)
    return ds.pixel_array


CASES = [(image, encoder) for image in IMAGES for encoder in ENCODERS
         # DCMTK refuses near-lossless JPEG-LS for signed pixels.
         if (image, encoder) != ("16-bit-signed", "jpeg-ls-near-lossless")]


@pytest.mark.parametrize("image,encoder", CASES)
def test_same_pixels_as_pylibjpeg(tmp_path, image, encoder):
    raw, packed = compressed(tmp_path, image, encoder)
    ours, theirs = plugin_pixels(packed), pylibjpeg_pixels(packed)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    if "near" not in encoder:  # lossless: the original pixels come back
        assert np.array_equal(ours, dcmread(raw).pixel_array)


def test_registered_for_the_lossless_jpeg_family_only():
    for syntax in (JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless):
        assert codecs.plugin_for(syntax) == codecs.PLUGIN
        assert codecs.PLUGIN in get_decoder(syntax).available_plugins
    assert codecs.plugin_for(JPEG2000Lossless) is None
    assert not codecs.is_available(JPEG2000Lossless)
    codecs.register()  # a second time (every import of convert does it): no error


def test_colour_frames_fall_back_to_pydicoms_plugins(tmp_path):
    raw = write(make_xray(rgb=True, sop_class=SECONDARY_CAPTURE, modality="OT"),
                tmp_path / "rgb.dcm")
    packed = tmp_path / "rgb-jpeg-ls.dcm"
    subprocess.run(["dcmcjpls", "+el", str(raw), str(packed)], check=True, capture_output=True)
    with pytest.raises(Exception, match="greyscale"):
        plugin_pixels(packed)
    assert np.array_equal(to_display(dcmread(packed)), to_display(dcmread(raw)))


@pytest.mark.parametrize("encoder", ["jpeg-lossless-sv1", "jpeg-ls-lossless"])
def test_a_frame_that_is_no_codestream_is_a_conversion_error(tmp_path, encoder):
    _, packed = compressed(tmp_path, "12-bit", encoder)
    ds = dcmread(packed)
    ds.PixelData = encapsulate([bytes(range(256)) * 8])
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    with pytest.raises(ConversionError, match="cannot be decoded|truncated or damaged"):
        convert_bytes(broken.read_bytes())
