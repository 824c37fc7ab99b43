"""JPEG quality read back from a file's quantisation tables (hdme.jpeg)."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from hdme.jpeg import LUMA_TABLE, jpeg_quality, libjpeg_tables
from runtime_support import textured_rgb


def _jpeg(quality: int) -> bytes:
    return cv2.imencode(".jpg", textured_rgb(64, 96), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def test_libjpeg_tables_scale_the_annex_k_tables_as_libjpeg_does():
    np.testing.assert_array_equal(libjpeg_tables(50)[0].ravel(), LUMA_TABLE)
    assert (libjpeg_tables(100) == 1).all()
    assert libjpeg_tables(1).max() == 255 and libjpeg_tables(10)[0, 0, 0] == 80  # 16 · 500 / 100


@pytest.mark.parametrize("quality", [5, 15, 29, 30, 40, 75, 95, 100])
def test_the_quality_a_file_was_saved_at_is_read_back(tmp_path, quality):
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(quality))
    assert jpeg_quality(path) == quality


def test_tables_after_an_exif_segment_and_in_16_bit_are_read(tmp_path):
    data = _jpeg(20)
    exif = b"Exif\x00\x00" + bytes(5000)
    (tmp_path / "exif.jpg").write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:])
    assert jpeg_quality(tmp_path / "exif.jpg") == 20
    # A 16-bit luminance table (Pq = 1) holding libjpeg's quality-20 values.
    table = libjpeg_tables(20)[0].astype(">u2").tobytes()
    (tmp_path / "wide.jpg").write_bytes(b"\xff\xd8\xff\xdb" + struct.pack(">H", 2 + 1 + 128) + b"\x10" + table + b"\xff\xda\x00\x02")
    assert jpeg_quality(tmp_path / "wide.jpg") == 20


def test_files_that_are_not_readable_jpegs_have_no_quality(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(32, 32))
    (tmp_path / "cut.jpg").write_bytes(_jpeg(20)[:30])
    (tmp_path / "scan-first.jpg").write_bytes(b"\xff\xd8\xff\xda\x00\x02" + bytes(10))
    for name in ("a.png", "cut.jpg", "scan-first.jpg", "missing.jpg"):
        assert jpeg_quality(tmp_path / name) is None
