"""Deflated data sets received over the network, inflated once, in blocks, with a bound.

A data set in Deflated Explicit VR Little Endian is a zlib stream: 195 KB of it can hold
an image of 10000 x 10000 zeros. pydicom inflates the whole stream in memory to read
even the header, and so would every later reader of the stored file (the conversion
worker, each time). So a received deflated file is rewritten once, as it is stored, in
Explicit VR Little Endian (the same data set: a lossless change of transfer syntax, PS3.4
B.4.1), reading and writing a block at a time and stopping as soon as the inflated size
passes the largest data set an accepted image can need (:func:`largest_data_set`). The
conformance statement (docs/pacs.md) says so.

Errors: :class:`DeflateError` (a ``BadInstance``: DICOM 0xC000 at C-STORE) for a stream
that is corrupt, or inflates past the limit; ``OSError`` when the file cannot be
written (0xA700).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from xrayvision.dicom.metadata import BadInstance

# What a data set may hold besides its pixels (overlays, private data, icons); the
# pixels themselves at most rows x columns x frames x 3 samples x 4 bytes.
NON_PIXEL_ALLOWANCE = 64 * 1024 * 1024
READ_BLOCK = 256 * 1024
INFLATE_BLOCK = 4 * 1024 * 1024
# File meta elements whose length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC",
                       b"UN", b"UR", b"UT", b"UV"})


class DeflateError(BadInstance):
    """The deflated data set is corrupt or inflates past the limit."""


def largest_data_set(max_pixels: int) -> int:
    """The inflated size past which no image of at most ``max_pixels`` pixels (rows x
    columns x frames) fits: 3 samples of 32 bits each, and the allowance for the rest."""
    return max_pixels * 3 * 4 + NON_PIXEL_ALLOWANCE


def data_set_offset(path: Path) -> int:
    """Where the data set starts in a DICOM file (after the preamble, ``DICM`` and the
    group 0002 elements, always Explicit VR Little Endian)."""
    with open(path, "rb") as fp:
        fp.seek(128)
        if fp.read(4) != b"DICM":
            raise DeflateError("no DICOM file header")
        while True:
            start = fp.tell()
            head = fp.read(8)
            if len(head) < 8 or struct.unpack_from("<H", head)[0] != 0x0002:
                return start
            vr = head[4:6]
            if vr in _LONG_VRS:
                extra = fp.read(4)
                if len(extra) < 4:
                    raise DeflateError("file meta information truncated")
                length = struct.unpack("<L", extra)[0]
            else:
                length = struct.unpack_from("<H", head, 6)[0]
            fp.seek(length, os.SEEK_CUR)


def is_deflated(meta: FileMetaDataset) -> bool:
    return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def inflate_file(path: Path, limit: int) -> bool:
    """Rewrites the DICOM file at ``path`` in Explicit VR Little Endian when its data
    set is deflated (atomically: a sibling file renamed over it); returns whether it
    did. Never holds more than a few MiB, nor writes more than ``limit`` bytes of data
    set. Raises as the module docstring says; ``path`` is then unchanged."""
    meta = read_file_meta_info(path)
    if not is_deflated(meta):
        return False
    offset = data_set_offset(path)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    target = path.with_name(path.name + ".inflated")
    try:
        with open(path, "rb") as source, open(target, "wb") as out:
            header = DicomBytesIO()
            write_file_meta_info(header, meta, enforce_standard=True)
            out.write(b"\0" * 128 + b"DICM" + header.getvalue())
            source.seek(offset)
            _inflate(source, out, limit)
        os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return True


def _inflate(source, out, limit: int) -> None:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate (PS3.5 A.5)
    total = 0
    while not inflater.eof:
        pending = source.read(READ_BLOCK)
        if not pending:
            raise DeflateError("deflated data set truncated")
        while pending:
            try:
                block = inflater.decompress(pending, INFLATE_BLOCK)
            except zlib.error as exc:
                raise DeflateError(f"deflated data set corrupt: {exc}") from None
            total += len(block)
            if total > limit:
                raise DeflateError(f"deflated data set inflates past {limit} bytes, more "
                                   f"than any image within [dicom] max_pixels needs")
            out.write(block)
            pending = inflater.unconsumed_tail
            if inflater.eof:
                break
