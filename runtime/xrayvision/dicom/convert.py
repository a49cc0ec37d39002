"""DICOM pixels to PNG. Pure functions.

Order of operations, as DICOM PS3.3 C.11 renders a greyscale image:

1. size check (rows x columns x frames) before anything is decoded; a compressed frame
   whose codestream does not end with its end marker (EOI/EOC) is truncated and refused,
   never decoded into a partly grey image;
2. first frame of a multi-frame image; colour (RGB, YBR as RGB, PALETTE COLOR through
   its LUTs) reduced to luminance;
3. modality LUT (rescale slope/intercept or a Modality LUT Sequence);
4. VOI: the VOI LUT Sequence, else Window Center/Width (the first of several by default),
   else a percentile window over the pixels that are not padding (a range narrower than
   1 after rescale is stretched linearly, PS3.3 C.11.2.1.3.2 LINEAR_EXACT);
5. pixel padding value shown black; MONOCHROME1 inverted so bone is white;
6. then, for the model, an adaptive gamma (identity when the mean is 0), an
   optional resize so the longest side is at most ``max_side``, and PNG encoding.

Steps 1-5 give what a DICOM viewer (e.g. DCMTK ``dcmj2pnm`` with the same window) shows.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from isal import isal_zlib
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import RLELossless

from xrayvision.dicom import codecs

log = logging.getLogger(__name__)

# pydicom's decoders are process-wide; ours joins them once, wherever pixels are decoded.
codecs.register()


class ConversionError(ValueError):
    """The instance cannot be turned into an image; the message says why."""


@dataclass(frozen=True)
class ConvertOptions:
    max_side: int = 1024  # 0: keep the full size
    png_compression: int = 1  # 0-3: ISA-L, 4-9: zlib (encode_png)
    window_index: int = 0  # which Window Center/Width pair (or VOI LUT) to use
    max_pixels: int = 50_000_000  # rows x columns x frames
    percentiles: tuple[float, float] = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    center: float
    width: float


@dataclass(frozen=True)
class Converted:
    png: bytes
    width: int
    height: int


def check_size(ds: Dataset, max_pixels: int) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ConversionError(f"image size unreadable: {exc}") from None
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ConversionError(f"image size {rows}x{cols}x{frames} is not an image")
    if rows * cols * frames > max_pixels:
        raise ConversionError(
            f"image of {rows}x{cols}x{frames} pixels exceeds the limit of {max_pixels}")


# JPEG, JPEG-LS and JPEG 2000 (HTJ2K too) codestreams all end with FF D9 (EOI/EOC).
_END_MARKER = b"\xff\xd9"


def check_codestream(ds: Dataset, frames: int) -> None:
    """Raises ConversionError when the first frame's codestream lacks its end marker:
    cut short in transit or on disk, it would decode to a partly grey image that looks
    whole. Trailing padding (00 or FF bytes, as encoders pad to an even length) is
    allowed. RLE has no end marker: its segment lengths are checked by the decoder."""
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=frames)
    except Exception as exc:  # noqa: BLE001 - broken item tags, offset tables...
        raise ConversionError(f"compressed pixel data is malformed: {exc}") from None
    if not frame.rstrip(b"\x00\xff").endswith(_END_MARKER):
        raise ConversionError(
            f"compressed pixel data is truncated or damaged: the frame's {len(frame)} "
            "bytes do not end with the codestream's end marker")


def _first_frame(ds: Dataset) -> np.ndarray:
    if "PixelData" not in ds:
        raise ConversionError("no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = 0 if frames > 1 else None  # first frame only
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated and syntax != RLELossless:
        check_codestream(ds, frames)
    fast = codecs.plugin_for(syntax) if syntax else None
    if fast:
        try:
            ds.pixel_array_options(index=index, decoding_plugin=fast)
            return ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom's own decoders get their turn below
            log.debug("fast decoder declined the frame: %s", exc)
    try:
        ds.pixel_array_options(index=index, decoding_plugin="")
        return ds.pixel_array
    except Exception as exc:  # pydicom and the decoders raise many types on broken data
        raise ConversionError(f"pixel data cannot be decoded: {exc}") from None


def _window_values(ds: Dataset, index: int) -> Window | None:
    centers, widths = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centers is None or widths is None:
        return None
    centers = list(centers) if isinstance(centers, list | tuple | MultiValue) else [centers]
    widths = list(widths) if isinstance(widths, list | tuple | MultiValue) else [widths]
    if not centers or not widths:
        return None
    i = min(index, len(centers) - 1, len(widths) - 1)
    try:
        center, width = float(centers[i]), float(widths[i])
    except (TypeError, ValueError):
        return None
    if not math.isfinite(center) or not math.isfinite(width) or width < 1:
        return None
    return Window(center, width)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """DICOM linear window (PS3.3 C.11.2.1.2.1) to 0..255 floats; a window narrower
    than 1 (real-valued pixels after rescale) maps linearly, as LINEAR_EXACT does."""
    c, w = window.center, window.width
    if w < 1:
        return np.clip((values - (c - w / 2)) / max(w, 1e-12) * 255.0, 0.0, 255.0)
    lower = c - 0.5 - (w - 1) / 2
    out = ((values - (c - 0.5)) / max(w - 1, 1e-9) + 0.5) * 255.0
    out = np.where(values <= lower, 0.0, out)
    return np.clip(out, 0.0, 255.0)


@dataclass(frozen=True)
class _Domain:
    """Every value a stored pixel can take, and how to index a LUT with a pixel."""

    values: np.ndarray  # stored values, in LUT order
    offset: int  # LUT index = stored value + offset


def _domain(arr: np.ndarray) -> _Domain:
    if arr.dtype == np.uint8:
        return _Domain(np.arange(256, dtype=np.int64), 0)
    if arr.dtype == np.uint16:
        return _Domain(np.arange(65536, dtype=np.int64), 0)
    if arr.dtype == np.int16:
        return _Domain(np.arange(-32768, 32768, dtype=np.int64), 32768)
    if arr.dtype == np.int8:
        return _Domain(np.arange(-128, 128, dtype=np.int64), 128)
    raise ConversionError(f"pixel type {arr.dtype} not supported for greyscale")


def _histogram(arr: np.ndarray, domain: _Domain) -> np.ndarray:
    flat = arr.ravel()
    if domain.offset:
        flat = flat.astype(np.int32) + domain.offset
    return np.bincount(flat, minlength=domain.values.size)


def _padding(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Where ``stored`` (stored values: a LUT's domain, or the pixels) is the Pixel
    Padding Value (or within its range); None without one."""
    if "PixelPaddingValue" not in ds:
        return None
    low = ds.PixelPaddingValue
    high = ds.get("PixelPaddingRangeLimit", low)
    low, high = min(low, high), max(low, high)
    return (stored >= low) & (stored <= high)


def percentile_window_from_histogram(values: np.ndarray, counts: np.ndarray,
                                     percentiles: tuple[float, float]) -> Window:
    """A window spanning the given percentiles of the pixels counted in ``counts``
    (``values`` are the modality values of each bin)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(counts[order])
    total = cumulative[-1] if cumulative.size else 0
    if total == 0:
        return Window(float(values.min()) + 0.5, 1.0)
    lo_at, hi_at = (np.searchsorted(cumulative, total * p / 100.0) for p in percentiles)
    lo = float(values[order][min(lo_at, order.size - 1)])
    hi = float(values[order][min(hi_at, order.size - 1)])
    return _span(lo, hi)


def _span(lo: float, hi: float) -> Window:
    """The window from ``lo`` to ``hi``; one of width 1 at ``lo`` when they are equal
    (a flat image), whatever the scale of the values."""
    width = hi - lo if hi > lo else 1.0
    return Window(center=lo + width / 2, width=width)


def _lut(ds: Dataset, arr: np.ndarray,
         opts: ConvertOptions) -> tuple[np.ndarray, _Domain, Window | None]:
    """The stored-value -> 8-bit display LUT (modality LUT, VOI, inversion, padding),
    and the window used (None for a VOI LUT Sequence)."""
    domain = _domain(arr)
    counts: np.ndarray | None = None
    modality = np.asarray(apply_modality_lut(domain.values, ds), dtype=np.float64)
    padding = _padding(ds, domain.values)
    window: Window | None = None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[min(opts.window_index, len(ds.VOILUTSequence) - 1)]
        try:
            # VOI LUTs are indexed by integer values.
            indices = np.rint(modality).astype(np.int64)
            out = np.asarray(apply_voi_lut(indices, ds, index=opts.window_index),
                             dtype=np.float64)
            bits = int(item.LUTDescriptor[2])
        except Exception as exc:  # a malformed LUT
            raise ConversionError(f"VOI LUT cannot be applied: {exc}") from None
        out = np.clip(out / max(2**bits - 1, 1) * 255.0, 0, 255)
    else:
        window = _window_values(ds, opts.window_index)
        if window is None:
            counts = _histogram(arr, domain)
            usable = counts if padding is None else np.where(padding, 0, counts)
            window = percentile_window_from_histogram(modality, usable, opts.percentiles)
        out = apply_window(modality, window)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255.0 - out
    if padding is not None:
        out[padding] = 0.0
    return np.rint(out).astype(np.uint8), domain, window


def chosen_window(ds: Dataset, opts: ConvertOptions = ConvertOptions()) -> Window | None:
    """The window :func:`to_display` uses (None when a VOI LUT Sequence applies)."""
    check_size(ds, opts.max_pixels)
    arr = _first_frame(ds)
    return _lut(ds, arr, opts)[2]


def _color_to_gray(arr: np.ndarray, bits: int) -> np.ndarray:
    """Luminance of RGB samples of ``bits`` bits (pydicom already returns YBR as RGB)."""
    rgb = np.ascontiguousarray(arr[..., :3])
    if rgb.dtype != np.uint8 or bits != 8:
        scale = 255.0 / max(2 ** min(bits, 32) - 1, 1)
        rgb = np.rint(np.clip(rgb.astype(np.float64) * scale, 0, 255)).astype(np.uint8)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _palette_to_gray(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """PALETTE COLOR: indices through the palette's red, green and blue LUTs."""
    try:
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception as exc:  # noqa: BLE001 - absent or malformed palette
        raise ConversionError(f"palette colour lookup tables unusable: {exc}") from None
    # Entries declared 16-bit that never exceed 255 are 8-bit values in 16-bit words (as
    # DCMTK also reads them): scaled as 16-bit they would show a black image.
    return _color_to_gray(rgb, 16 if bits > 8 and int(rgb.max(initial=0)) > 255 else 8)


def _real_to_display(ds: Dataset, arr: np.ndarray, opts: ConvertOptions) -> np.ndarray:
    """32-bit integer and floating-point pixels: too many values for a lookup table, so
    the modality LUT and the window are applied to the pixels themselves."""
    try:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - a malformed modality LUT
        raise ConversionError(f"modality LUT cannot be applied: {exc}") from None
    usable = np.isfinite(values)
    padding = _padding(ds, arr)
    if padding is not None:
        usable &= ~padding
    window = _window_values(ds, opts.window_index)
    if window is None:
        found = values[usable]
        window = (_span(*(float(v) for v in np.percentile(found, opts.percentiles)))
                  if found.size else Window(0.5, 1.0))
    out = apply_window(np.where(np.isfinite(values), values, 0.0), window)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255.0 - out
    if padding is not None:
        out[padding] = 0.0
    return np.rint(out).astype(np.uint8)


def to_display(ds: Dataset, opts: ConvertOptions = ConvertOptions()) -> np.ndarray:
    """8-bit greyscale as a viewer shows it (steps 1-5 above).

    Greyscale pixels are mapped through one lookup table over every possible stored
    value, so the per-pixel work is one histogram and one table lookup.
    """
    check_size(ds, opts.max_pixels)
    arr = _first_frame(ds)
    if not arr.dtype.isnative:  # big endian data sets: the LUT path indexes native values
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return _color_to_gray(arr, int(ds.get("BitsStored", 8) or 8))
    if arr.ndim != 2:
        raise ConversionError(f"unexpected pixel array shape {arr.shape}")
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        return _palette_to_gray(ds, arr)
    if arr.dtype.kind == "f" or arr.dtype.itemsize > 2:
        return _real_to_display(ds, arr, opts)
    lut, domain, _window = _lut(ds, arr, opts)
    index = arr if not domain.offset else (arr.astype(np.int32) + domain.offset)
    return np.take(lut, index)


def adaptive_gamma(img: np.ndarray) -> np.ndarray:
    """Adaptive gamma: brings the mean towards mid-grey; identity when mean <= 0."""
    mean = float(img.mean()) / 255.0
    if mean <= 0 or mean >= 1:
        return img
    gamma = math.log(0.5) / math.log(mean)
    lut = np.clip(((np.arange(256) / 255.0) ** gamma) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def fit(img: np.ndarray, max_side: int) -> np.ndarray:
    """Downscales so the longest side is at most ``max_side`` (never upscales)."""
    height, width = img.shape[:2]
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return img
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


# OpenCV's PNG writer (libpng + zlib) needs ~75 ms for a 3000x3000 X-ray even at its
# fastest settings; ISA-L's deflate ~25 ms for a file about 20% larger (bench/README.md,
# "Conversion"). Levels 0-3 therefore go through ISA-L, 4-9 through OpenCV for the
# smallest files. The "up" row filter suits X-rays best in both (measured there too).
FAST_PNG_LEVELS = range(4)
_PNG_PARAMS = [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
               cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_UP = 2
_IDAT_MAX = 1 << 30  # PNG chunks hold at most 2**31 - 1 bytes


def _png_chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join((struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)))


def _png_isal(img: np.ndarray, level: int) -> bytes:
    """8-bit greyscale PNG (PNG spec, ISO/IEC 15948): every row "up"-filtered, the
    scanlines deflated by ISA-L."""
    height, width = img.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = _PNG_FILTER_UP
    rows[0, 1:] = img[0]  # the row above the first is zeros
    np.subtract(img[1:], img[:-1], out=rows[1:, 1:])  # modulo 256, as the filter defines
    data = memoryview(isal_zlib.compress(rows, level))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grey
    return b"".join((_PNG_SIGNATURE, _png_chunk(b"IHDR", header),
                     *(_png_chunk(b"IDAT", data[i:i + _IDAT_MAX])
                       for i in range(0, len(data), _IDAT_MAX)),
                     _png_chunk(b"IEND", b"")))


def encode_png(img: np.ndarray, level: int) -> bytes:
    """PNG of an 8-bit greyscale image; ``level`` 0-3: ISA-L (fast), 4-9: zlib (small)."""
    if level in FAST_PNG_LEVELS and img.ndim == 2 and img.dtype == np.uint8 and img.size:
        return _png_isal(np.ascontiguousarray(img), level)
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, int(level), *_PNG_PARAMS])
    if not ok:
        raise ConversionError("PNG encoding failed")
    return buf.tobytes()


def convert_dataset(ds: Dataset, opts: ConvertOptions = ConvertOptions()) -> Converted:
    img = fit(adaptive_gamma(to_display(ds, opts)), opts.max_side)
    return Converted(png=encode_png(img, opts.png_compression), width=img.shape[1],
                     height=img.shape[0])


def convert_bytes(data: bytes, opts: ConvertOptions = ConvertOptions()) -> Converted:
    """Converts an encoded DICOM file; raises ConversionError on anything unusable.

    This is what the process pool runs: bytes in, bytes out, nothing shared.
    """
    try:
        ds = dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise ConversionError(f"not a readable DICOM file: {exc}") from None
    return convert_dataset(ds, opts)


def convert_file(path: str, opts: ConvertOptions = ConvertOptions()) -> Converted:
    """Converts the DICOM file at ``path`` (as :func:`convert_bytes`; the pool reads the
    file itself, so no image travels between processes)."""
    try:
        ds = dcmread(path, force=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ConversionError(f"not a readable DICOM file: {exc}") from None
    return convert_dataset(ds, opts)
