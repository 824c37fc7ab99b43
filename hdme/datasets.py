"""Evaluation data: the real benchmarks in ``../shared/data`` and user folders.

Real data is for evaluation only; nothing in hdme trains or calibrates on it.

Kinds of sample:
- ``map``: an image with a σ map in px (RTF, synthetic sets, user folders);
- ``mask``: an image with a binary mask, True = in focus (CUHK, DUT).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from hdme.conventions import load_sigma_map
from hdme.errors import HdmeError
from hdme.images import IMAGE_EXTS, read_image

REAL_DATASETS = ("rtf", "cuhk", "dut")


@dataclass
class Sample:
    name: str
    image: np.ndarray  # RGB uint8
    sigma: np.ndarray | None = None  # σ px, float32
    in_focus: np.ndarray | None = None  # bool
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "map" if self.sigma is not None else "mask"


def shared_data_dir() -> Path | None:
    """The folder of real benchmarks: $HDME_DATA, else ``../shared/data`` beside the checkout or cwd."""
    env = os.environ.get("HDME_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _require_dir(name: str, sub: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / sub).is_dir():
        raise HdmeError(
            f"dataset '{name}' not found: expected {sub}/ under ../shared/data or $HDME_DATA"
        )
    return root / sub


def _mask(path: Path, in_focus_value: int) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise HdmeError(f"{path}: unreadable mask")
    return (m >= 128) if in_focus_value == 255 else (m < 128)


def _rtf() -> Iterator[Sample]:
    root = _require_dir("rtf", "rtf")
    for img in sorted((root / "image").glob("image_*.png")):
        idx = img.stem.split("_")[1]
        gt = root / "gt_sigma_derived" / f"sigma_{idx}.npy"
        yield Sample(img.stem, read_image(img), sigma=load_sigma_map(gt))


def _cuhk() -> Iterator[Sample]:
    root = _require_dir("cuhk", "cuhk_blur_detection")
    # Original CUHK masks: 255 = blurred. The 320x320 redistribution is inverted: 255 = sharp.
    for img in sorted((root / "image").iterdir()):
        yield Sample(img.stem, read_image(img), in_focus=_mask(root / "gt" / f"{img.stem}.png", in_focus_value=0))
    zhao = root / "zhao_denets_320"
    if zhao.is_dir():
        for img in sorted((zhao / "image").glob("*.bmp")):
            yield Sample(f"xu100_{img.stem}", read_image(img), in_focus=_mask(zhao / "gt" / img.name, in_focus_value=255))


def _dut() -> Iterator[Sample]:
    root = _require_dir("dut", "dut_blur_detection")
    for img in sorted((root / "image").glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem):
        yield Sample(f"dut_{img.stem}", read_image(img), in_focus=_mask(root / "gt" / f"{img.stem}.bmp", in_focus_value=255))


def _folder(path: Path) -> Iterator[Sample]:
    """A user folder: ``image/`` with ``defocus/`` (σ maps) or ``mask/`` (255 = in focus), or flat
    ``NAME.<img>`` files beside ``NAME.npy`` / ``NAME.png`` σ maps."""
    if (path / "image").is_dir():
        images = sorted(p for p in (path / "image").iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for img in images:
            for sub in ("defocus", "mask"):
                for ext in (".png", ".npy", ".bmp"):
                    target = path / sub / f"{img.stem}{ext}"
                    if target.is_file():
                        if sub == "defocus":
                            yield Sample(img.stem, read_image(img), sigma=load_sigma_map(target))
                        else:
                            yield Sample(img.stem, read_image(img), in_focus=_mask(target, 255))
                        break
                else:
                    continue
                break
        return
    for gt in sorted(path.glob("*.npy")):
        imgs = [p for p in path.glob(f"{gt.stem}.*") if p.suffix.lower() in IMAGE_EXTS]
        if imgs:
            yield Sample(gt.stem, read_image(imgs[0]), sigma=load_sigma_map(gt))


def load_dataset(name: str, limit: int | None = None) -> list[Sample]:
    """``rtf``, ``cuhk``, ``dut`` or a folder path → list of samples (one clear error if absent)."""
    sources = {"rtf": _rtf, "cuhk": _cuhk, "dut": _dut}
    if name in sources:
        it = sources[name]()
    else:
        path = Path(name)
        if not path.is_dir():
            raise HdmeError(f"dataset '{name}': not one of {', '.join(REAL_DATASETS)} and not a folder")
        it = _folder(path)
    samples = []
    for s in it:
        samples.append(s)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise HdmeError(f"dataset '{name}': no image/ground-truth pairs found")
    return samples
