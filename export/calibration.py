"""Calibration images for INT8: a folder of images (calib_data/ holds COCO_shuffle crops) turned
into network inputs exactly as the runtime prepares frames (RGB, /255, NCHW float32), at one fixed
size, plus the hash that identifies the set in engine sidecars and calibration caches."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from hdme.conventions import rgb_to_input
from hdme.errors import HdmeError
from hdme.images import fit_to_size, list_images, read_image
from hdme.io import write_bytes

CALIB_SIZE = (256, 256)  # H, W: the size of the COCO_shuffle crops in calib_data/
CACHE_MAGIC = b"hdme-calibration-cache v1 "


def default_calibration_folder() -> Path:
    """calib_data/ of the source tree. An installed package does not carry it (8.5 MB of images)."""
    folder = Path(__file__).resolve().parents[1] / "calib_data"
    if not folder.is_dir():
        raise HdmeError("this installation has no calibration images (calib_data/ is in the source tree, "
                        "or make a set with: hdme data make DIR --count 120 --flat)")
    return folder


class CalibrationSet:
    """The first ``count`` images (sorted by path) of ``folder`` as network inputs of ``size``."""

    def __init__(self, folder: str | os.PathLike, size: tuple[int, int] = CALIB_SIZE, count: int | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise HdmeError(f"{self.folder}: calibration folder not found")
        paths = list_images(self.folder)
        if not paths:
            raise HdmeError(f"{self.folder}: no calibration images (png/jpg) in this folder")
        if count is not None:
            if count < 1:
                raise HdmeError(f"calibration count must be at least 1, not {count}")
            paths = paths[:count]
        self.paths = paths
        self.size = (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        return rgb_to_input(fit_to_size(read_image(self.paths[index]), self.size))[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Full batches [B, 3, H, W] in order; a last partial batch is dropped, because a TensorRT
        calibrator feeds a fixed batch shape and a short one would reuse stale device memory."""
        if batch_size < 1:
            raise HdmeError(f"calibration batch size must be at least 1, not {batch_size}")
        if batch_size > len(self):
            raise HdmeError(f"{self.folder}: {len(self)} calibration images, fewer than one batch of {batch_size}")
        for start in range(0, len(self) - batch_size + 1, batch_size):
            yield np.stack([self.load(i) for i in range(start, start + batch_size)])

    @property
    def sha256(self) -> str:
        """Hash of the names and bytes of the images used, and of the input size."""
        digest = hashlib.sha256(f"{self.size[0]}x{self.size[1]}\n".encode())
        for path in self.paths:
            digest.update(path.relative_to(self.folder).as_posix().encode() + b"\n")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def read_calibration_cache(path: str | os.PathLike, calib_sha256: str) -> bytes | None:
    """The TensorRT calibration table stored in ``path`` if it was computed on the same set,
    else None (a table from other images would silently give other scales)."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    header, _, table = data.partition(b"\n")
    if header != CACHE_MAGIC + calib_sha256.encode() or not table:
        return None
    return table


def write_calibration_cache(path: str | os.PathLike, table: bytes, calib_sha256: str) -> None:
    write_bytes(path, CACHE_MAGIC + calib_sha256.encode() + b"\n" + bytes(table))


def ort_calibration_reader(calib: CalibrationSet, input_name: str, progress=None):
    """An onnxruntime CalibrationDataReader feeding ``calib`` one image at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self):
            if self.index >= len(calib):
                return None
            x = calib.load(self.index)[None]
            self.index += 1
            if progress is not None:
                progress()
            return {input_name: x}

        def rewind(self) -> None:
            self.index = 0

    return _Reader()
