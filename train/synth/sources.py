"""Where source images come from: photos bundled with scikit-image (offline) or any folder."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from hdme.errors import HdmeError, require
from hdme.images import list_images, read_image

# scikit-image sample photos stored inside its wheel. Left out: clock_motion (motion-blurred),
# the synthetic or binary ones (chessboard, horse, phantom, logo, text, page) and the tiny
# microaneurysms crop.
_BUNDLED = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
    "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg",
)


def bundled_images() -> list[np.ndarray]:
    """scikit-image's sample photos present in the installed package, as RGB uint8 arrays."""
    data = require("skimage.data", "train")
    folder = Path(data.__file__).parent
    images = []
    for name in _BUNDLED:
        path = folder / name
        if path.is_file():
            images.append(read_image(path))
    if not images:
        raise HdmeError(f"no bundled sample photos found in {folder}; reinstall scikit-image")
    return images


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator, max_downscale: float = 2.0) -> np.ndarray:
    """A size×size crop at a random position and random scale (only ever downscaled, so it stays sharp).

    Images smaller than ``size`` are enlarged just enough; a caller that cares skips them first.
    """
    h, w = img.shape[:2]
    fit = min(h, w) / size
    scale = fit if fit < 1.0 else min(fit, float(np.exp(rng.uniform(0.0, np.log(max_downscale)))))
    side = max(int(round(size * scale)), 1)
    side = min(side, h, w)
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[y : y + side, x : x + side]
    if side != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)
    return np.ascontiguousarray(crop)


class ImageListSource:
    """Random crops from images held in memory (e.g. ``bundled_images()``)."""

    def __init__(self, images: list[np.ndarray], name: str = "images") -> None:
        if not images:
            raise HdmeError(f"{name}: no source images")
        self.images = images
        self.name = name
        self.corrupt_paths: set[str] = set()
        self.small_paths: set[str] = set()

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return random_crop(self.images[int(rng.integers(len(self.images)))], size, rng)


class FolderSource:
    """Random crops from the images of a folder (COCO train2017 or any other).

    Images smaller than the crop size are skipped, and corrupt files are skipped with a warning;
    both are remembered (``small_paths``, ``corrupt_paths``) for the manifest.
    """

    def __init__(self, folder: str | os.PathLike, max_tries: int = 50) -> None:
        self.folder = Path(folder)
        self.paths = list_images(self.folder)
        if not self.paths:
            raise HdmeError(f"{self.folder}: no images found")
        self.name = str(self.folder)
        self.max_tries = max_tries
        self.corrupt_paths: set[str] = set()
        self.small_paths: set[str] = set()
        self._bad: set[int] = set()

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        for _ in range(self.max_tries):
            i = int(rng.integers(len(self.paths)))
            if i in self._bad:
                continue
            try:
                img = read_image(self.paths[i])
            except HdmeError as exc:
                self._bad.add(i)
                self.corrupt_paths.add(str(self.paths[i]))
                warnings.warn(f"skipping unreadable source: {exc}", stacklevel=2)
                continue
            if min(img.shape[:2]) < size:
                self._bad.add(i)
                self.small_paths.add(str(self.paths[i]))
                continue
            return random_crop(img, size, rng)
        raise HdmeError(f"{self.folder}: no usable image ≥ {size} px found in {self.max_tries} tries "
                        f"({len(self.corrupt_paths)} corrupt, {len(self.small_paths)} too small)")


def as_source(sources) -> ImageListSource | FolderSource:
    """None → bundled photos; a list of RGB uint8 arrays → in-memory source; a folder path → FolderSource."""
    if sources is None:
        return ImageListSource(bundled_images(), "bundled")
    if isinstance(sources, (ImageListSource, FolderSource)):
        return sources
    if isinstance(sources, (str, os.PathLike)):
        return FolderSource(sources)
    return ImageListSource([np.asarray(s, dtype=np.uint8) for s in sources])
