"""Seeded fuzzing of the image and video readers: whatever the bytes, the answer is a correct
image (or frames) or one HdmeError line, never another exception."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from hdme.errors import HdmeError
from hdme.images import read_image, to_rgb8
from hdme.runtime.sources import VideoFileSource
from runtime_support import textured_rgb, write_video

SEED = 18


def one_line_error(exc: HdmeError, path) -> None:
    text = str(exc)
    assert text and "\n" not in text, text
    assert str(path) in text, text


def read_or_one_line(path):
    """read_image's image, or None after checking its error is one line naming the file."""
    try:
        img = read_image(path)
    except HdmeError as exc:
        one_line_error(exc, path)
        return None
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 8
    return img


def exif_segment(orientation_bytes: bytes, byte_order: bytes = b"II") -> bytes:
    """An APP1 Exif segment whose IFD0 holds one orientation entry with the given value bytes."""
    end = "<" if byte_order == b"II" else ">"
    ifd = struct.pack(end + "H", 1) + struct.pack(end + "HHI", 0x0112, 3, 1) + orientation_bytes + struct.pack(end + "I", 0)
    body = b"Exif\x00\x00" + byte_order + struct.pack(end + "H", 42) + struct.pack(end + "I", 8) + ifd
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def lossless_samples(rng) -> dict[str, tuple[bytes, np.ndarray]]:
    """Encoded files of several formats, dtypes and channel counts, with the RGB uint8 image
    that reading each must give."""
    bgr = cv2.cvtColor(textured_rgb(24, 40, seed=3), cv2.COLOR_RGB2BGR)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    alpha = rng.integers(0, 256, (24, 40), dtype=np.uint8)
    arrays = {
        "rgb8.png": bgr, "grey8.png": grey, "bgra8.png": np.dstack([bgr, alpha]),
        "rgb16.png": bgr.astype(np.uint16) * 257, "grey16.tiff": grey.astype(np.uint16) * 257,
        "float01.tiff": bgr.astype(np.float32) / 255.0, "float255.tiff": grey.astype(np.float32),
        "rgb.bmp": bgr, "grey.pgm": grey, "rgb.ppm": bgr, "rgb.webp": bgr,
    }
    samples = {}
    for name, array in arrays.items():
        ext = "." + name.split(".")[1]
        ok, data = cv2.imencode(ext, array, [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else [])  # 101: lossless
        assert ok, name
        samples[name] = (data.tobytes(), to_rgb8(array))
    return samples


def test_valid_files_of_every_kind_read_exactly(tmp_path):
    for name, (data, expected) in lossless_samples(np.random.default_rng(SEED)).items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(read_image(tmp_path / name), expected, err_msg=name)


def test_random_bytes_truncations_and_bit_flips_are_an_image_or_one_line(tmp_path, capfd):
    rng = np.random.default_rng(SEED)
    samples = lossless_samples(rng)
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(textured_rgb(32, 48, seed=1), cv2.COLOR_RGB2BGR))[1].tobytes()
    samples["photo.jpg"] = (jpeg, None)
    outcomes = {"image": 0, "error": 0}
    for i in range(40):  # random bytes, some behind a real signature
        head = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"RIFF"][i % 5]
        path = tmp_path / f"random{i}.{['png', 'jpg', 'tiff', 'webp', 'bmp'][i % 5]}"
        path.write_bytes(head + rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes())
        outcomes["error" if read_or_one_line(path) is None else "image"] += 1
    for name, (data, _) in samples.items():
        for j in range(6):
            cut = tmp_path / f"cut{j}_{name}"
            cut.write_bytes(data[: int(rng.integers(0, len(data)))])
            flipped = bytearray(data)
            for offset in rng.integers(0, len(data), 1 + j):
                flipped[offset] ^= 1 << int(rng.integers(0, 8))
            flip = tmp_path / f"flip{j}_{name}"
            flip.write_bytes(bytes(flipped))
            for path in (cut, flip):
                outcomes["error" if read_or_one_line(path) is None else "image"] += 1
    assert outcomes["error"] > 40 and outcomes["image"] > 0, outcomes  # both branches were exercised
    assert capfd.readouterr().err == ""  # decoders' own complaints stay out of the terminal


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint32, np.float16, np.int64, bool, np.complex64])
@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4, 5])
def test_arrays_of_odd_dtypes_and_channel_counts_convert_or_fail_in_one_line(dtype, channels):
    rng = np.random.default_rng(SEED)
    shape = (12, 16) if channels is None else (12, 16, channels)
    array = (rng.random(shape) * 100).astype(dtype)
    try:
        rgb = to_rgb8(array, "array")
    except HdmeError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("array: ")
        return
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.uint8


def test_exif_variants_give_the_shown_or_the_stored_layout(tmp_path):
    stored = cv2.cvtColor(textured_rgb(24, 40, seed=2), cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode(".jpg", stored)[1].tobytes()
    rotated = (40, 24, 3)  # orientations 5–8 swap the sides
    variants = {
        "le6": (exif_segment(struct.pack("<HH", 6, 0)), rotated),
        "be8": (exif_segment(struct.pack(">HH", 8, 0), b"MM"), rotated),
        "be3": (exif_segment(struct.pack(">HH", 3, 0), b"MM"), (24, 40, 3)),
        "zero": (exif_segment(struct.pack("<HH", 0, 0)), (24, 40, 3)),
        "nine": (exif_segment(struct.pack("<HH", 9, 0)), (24, 40, 3)),
        "huge": (exif_segment(struct.pack("<HH", 65535, 0)), (24, 40, 3)),
        "truncated": (exif_segment(struct.pack("<HH", 6, 0))[:-9], None),
        "garbage": (b"\xff\xe1\x00\x20Exif\x00\x00" + bytes(range(26)), None),
    }
    for name, (segment, shape) in variants.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(jpeg[:2] + segment + jpeg[2:])
        img = read_or_one_line(path)
        if shape is not None:
            assert img is not None and img.shape == shape, (name, None if img is None else img.shape)
        elif img is not None:
            assert img.shape in ((24, 40, 3), rotated), name


def test_video_reader_on_random_and_truncated_files_gives_frames_or_one_line(tmp_path):
    rng = np.random.default_rng(SEED)
    good = write_video(tmp_path / "good.avi", frames=6, h=32, w=48)
    data = good.read_bytes()
    paths = []
    for i in range(4):
        path = tmp_path / f"cut{i}.avi"
        path.write_bytes(data[: int(rng.integers(0, len(data)))])
        paths.append(path)
    for i, ext in enumerate(("mp4", "avi")):
        path = tmp_path / f"random{i}.{ext}"
        path.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        paths.append(path)
    for path in paths:
        try:
            source = VideoFileSource(path)
        except HdmeError as exc:
            one_line_error(exc, path)
            continue
        with source:
            frames = 0
            while (frame := source.read()) is not None:
                assert frame.image.dtype == np.uint8 and frame.image.shape[2] == 3
                frames += 1
            assert frames <= 6
