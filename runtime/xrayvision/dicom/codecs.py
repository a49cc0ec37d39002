"""A pydicom decoding plugin for the lossless JPEG family and 12-bit JPEG Extended,
backed by imagecodecs.

pydicom tries its plugins (GDCM, pylibjpeg, ...) in a fixed order; pylibjpeg-libjpeg
decodes a 3000x3000 JPEG-lossless X-ray in ~450 ms, imagecodecs' libjpeg-turbo in ~65 ms
and its CharLS decodes JPEG-LS about four times faster too (bench/README.md,
"Conversion"). Both give the same pixels bit for bit (tests/dicom/test_codecs.py).
12-bit JPEG Extended (process 4, old CR and mammography) is decoded by libjpeg-turbo
where pylibjpeg-libjpeg refuses some real files ("a misplaced marker segment").

The plugin follows pydicom's decoder plugin contract (``is_available``,
``DECODER_DEPENDENCIES``, a ``_decode_frame(src, runner)`` returning the frame's bytes)
and is registered under :data:`PLUGIN` by :func:`register`. It is only asked for by name
(:func:`plugin_for`); pydicom's own plugins stay in place as the fallback, e.g. for a
frame libjpeg-turbo refuses.
"""

from __future__ import annotations

import contextlib

import imagecodecs
from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder

PLUGIN = "xrayvision-imagecodecs"

_JPEG_LOSSLESS = (uid.JPEGLossless, uid.JPEGLosslessSV1)
_JPEG_LS = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)
_JPEG_TURBO = (*_JPEG_LOSSLESS, uid.JPEGExtended12Bit)

DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1",) for syntax in _JPEG_TURBO + _JPEG_LS}


def is_available(syntax: str) -> bool:
    """pydicom's plugin contract: True when this plugin can decode ``syntax`` here
    (imagecodecs is a dependency; its wheel may still lack a codec)."""
    if syntax in _JPEG_TURBO:
        return bool(imagecodecs.JPEG8.available)
    return syntax in _JPEG_LS and bool(imagecodecs.JPEGLS.available)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """pydicom's plugin contract: one encoded frame in, its pixels as bytes out."""
    # Colour frames come back colour-converted or interleaved differently from what
    # pydicom expects of this syntax: those are left to pydicom's own plugins.
    if runner.samples_per_pixel != 1:
        raise ValueError("only greyscale frames are decoded by this plugin")
    if runner.transfer_syntax in _JPEG_TURBO:
        # libjpeg-turbo >= 3: 2-16 bits lossless, 8 and 12 bits lossy
        frame = imagecodecs.jpeg8_decode(src)
    else:
        frame = imagecodecs.jpegls_decode(src)
    # The container follows the codestream's precision (uint8 up to 8 bits, else
    # uint16), as with pylibjpeg; pydicom then applies the sign and unused-bit rules.
    runner.set_option("bits_allocated", 8 * frame.dtype.itemsize)
    return frame.tobytes()


def register() -> None:
    """Adds the plugin to pydicom's decoders (idempotent; pydicom's own stay in place)."""
    for syntax in DECODER_DEPENDENCIES:
        with contextlib.suppress(ValueError):  # added before (available or not)
            get_decoder(syntax).add_plugin(PLUGIN, (__name__, "_decode_frame"))


def plugin_for(syntax: str) -> str | None:
    """The plugin name to ask pydicom for when decoding ``syntax``; None: pydicom's
    default order."""
    if syntax in DECODER_DEPENDENCIES and PLUGIN in get_decoder(syntax).available_plugins:
        return PLUGIN
    return None
