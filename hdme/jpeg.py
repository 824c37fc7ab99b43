"""JPEG quality: libjpeg's quantisation tables for a quality setting, and the quality a file was
saved at, estimated from the luminance table in its header.

Below quality 40 or so, the 8×8 blocks that JPEG leaves in smooth regions pass for sharp edges, and
blur reads low (model card, "Known limitations"); the runtime says so for such files. The training
stage compresses with the same tables.
"""

from __future__ import annotations

import functools
import os

import numpy as np

# ITU-T T.81 Annex K, in row order: the tables libjpeg scales by quality.
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32),
)
HEADER_BYTES = 1 << 18  # the tables come before the image data; EXIF thumbnails can push them this far


def libjpeg_tables(quality: int) -> np.ndarray:
    """libjpeg's (luma, chroma) quantisation tables for ``quality`` 1–100: float64 [2, 8, 8]."""
    q = min(max(int(quality), 1), 100)
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    base = np.array([LUMA_TABLE, CHROMA_TABLE], np.float64).reshape(2, 8, 8)
    return np.clip(np.floor((base * scale + 50.0) / 100.0), 1, 255)


@functools.lru_cache(maxsize=1)
def _sorted_luma_tables() -> np.ndarray:
    """libjpeg's luminance tables for qualities 1–100, each sorted: [100, 64]."""
    return np.sort(np.stack([libjpeg_tables(q)[0].ravel() for q in range(1, 101)]), axis=1)


def _luma_table(header: bytes) -> np.ndarray | None:
    """The 64 values of quantisation table 0 in a JPEG header (in zig-zag order), or None."""
    if header[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(header):
        if header[at] != 0xFF:
            return None
        marker, length = header[at + 1], int.from_bytes(header[at + 2:at + 4], "big")
        if marker == 0xDA or length < 2:  # start of scan: no table came before the image data
            return None
        if marker == 0xDB:
            segment, pos = header[at + 4:at + 2 + length], 0
            while pos < len(segment):
                precision, table = segment[pos] >> 4, segment[pos] & 0x0F
                size = 128 if precision else 64
                values = segment[pos + 1:pos + 1 + size]
                if len(values) < size:
                    return None
                if table == 0:
                    return np.frombuffer(values, ">u2" if precision else np.uint8).astype(np.float64)
                pos += 1 + size
        at += 2 + length
    return None


def jpeg_quality(path: str | os.PathLike) -> int | None:
    """The libjpeg quality whose luminance table is nearest to the file's, or None where the file is
    not a JPEG or its header cannot be read. Encoders with tables of their own (many cameras) get
    the libjpeg quality that quantises about as coarsely."""
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
    except OSError:
        return None
    table = _luma_table(header)
    if table is None:
        return None
    # Sorted values: the file stores the table in zig-zag order, and the comparison need not care.
    errors = np.abs(_sorted_luma_tables() - np.sort(table)).sum(axis=1)
    return int(np.argmin(errors)) + 1
