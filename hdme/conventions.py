"""Where σ is defined and how it is stored.

- σ is the standard deviation, in pixels of the image the user gave, of the Gaussian PSF
  (for a non-Gaussian PSF: of its second moment; a disc of radius r has σ = r/2).
- Networks predict σ / ``SIGMA_SCALE`` in [0, 1]; everything user-facing speaks σ in px.
- A map stored on disk is float32 ``.npy`` of σ px, or a 16-bit PNG with value round(1000·σ).
- Colour maps for people use a fixed σ range, never per-frame min–max.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from hdme.contract import SIGMA_SCALE
from hdme.errors import HdmeError
from hdme.io import atomic_path

SIGMA_MAX = 10.0  # px; the range every model is trained on
# Where accuracy is reported and balanced: edges of the true-σ bins, px (the last bin is open-ended).
SIGMA_BIN_EDGES = (0.0, 1.0, 3.0, 5.0, 7.0, 10.0)
PNG_SCALE = 1000.0  # 16-bit PNG value = round(PNG_SCALE · σ)
COLORMAP = cv2.COLORMAP_INFERNO


def rgb_to_input(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 H×W×3 → float32 [1,3,H,W] in [0, 1] (every model's input), written into ``out`` when given."""
    if out is None:
        out = np.empty((1, 3, *rgb.shape[:2]), np.float32)
    np.multiply(rgb.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out[0], casting="unsafe")
    return out


def sigma_to_output(sigma: np.ndarray) -> np.ndarray:
    return np.asarray(sigma, dtype=np.float32) / SIGMA_SCALE


def output_to_sigma(out: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0) * SIGMA_SCALE


def rescale_sigma(sigma: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Resize a σ map from (H, W) to (H, W) and convert its values to the new pixel units."""
    (fh, fw), (th, tw) = from_size, to_size
    if (fh, fw) == (th, tw):
        return sigma.astype(np.float32, copy=False)
    factor = 0.5 * (th / fh + tw / fw)
    interp = cv2.INTER_AREA if th < fh else cv2.INTER_LINEAR
    return cv2.resize(sigma.astype(np.float32), (tw, th), interpolation=interp) * np.float32(factor)


def save_sigma_map(path: str | os.PathLike, sigma: np.ndarray) -> Path:
    """Write σ px as float32 .npy or 16-bit PNG (×1000), atomically."""
    path = Path(path)
    sigma = np.asarray(sigma, dtype=np.float32)
    if sigma.ndim != 2:
        raise HdmeError(f"{path}: a σ map must be 2-D, got shape {sigma.shape}")
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, sigma)
        elif suffix == ".png":
            png = np.clip(np.rint(sigma * PNG_SCALE), 0, 65535).astype(np.uint16)
            if not cv2.imwrite(str(tmp), png):
                raise HdmeError(f"{path}: OpenCV could not write the PNG")
        else:
            raise HdmeError(f"{path}: σ maps are stored as .npy or .png, not '{suffix}'")
    return path


def load_sigma_map(path: str | os.PathLike) -> np.ndarray:
    """Read a σ map (float32 px) from .npy or a 16-bit PNG (value/1000)."""
    path = Path(path)
    if not path.is_file():
        raise HdmeError(f"{path}: no such map file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".png":
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise HdmeError(f"{path}: not a readable PNG")
            if arr.dtype != np.uint16:
                raise HdmeError(f"{path}: σ PNGs are 16-bit (value = 1000·σ), this one is {arr.dtype}")
            arr = arr.astype(np.float32) / PNG_SCALE
        else:
            raise HdmeError(f"{path}: σ maps are .npy or 16-bit .png, not '{suffix}'")
    except ValueError as exc:
        raise HdmeError(f"{path}: corrupt map file ({exc})") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise HdmeError(f"{path}: a σ map must be 2-D, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def colorize(sigma: np.ndarray, vmax: float = SIGMA_MAX) -> np.ndarray:
    """σ px → BGR uint8 colour map on the fixed scale [0, vmax]."""
    scaled = np.clip(np.asarray(sigma, dtype=np.float32) / vmax, 0.0, 1.0)
    return cv2.applyColorMap((scaled * 255.0 + 0.5).astype(np.uint8), COLORMAP)


def scale_bar(height: int, vmax: float = SIGMA_MAX, width: int = 56) -> np.ndarray:
    """A vertical BGR colour bar with tick labels in px, ``height`` pixels tall."""
    if height < 64:
        # Tick labels need room: draw at 64 px and shrink, so tiny frames still get a bar.
        return cv2.resize(scale_bar(64, vmax, width), (width, max(int(height), 1)), interpolation=cv2.INTER_AREA)
    ramp = np.linspace(vmax, 0.0, height, dtype=np.float32)[:, None].repeat(14, axis=1)
    bar = np.full((height, width, 3), 255, np.uint8)
    bar[:, 4:18] = colorize(ramp, vmax)
    font_scale = max(0.3, min(0.5, height / 800))
    for tick in np.linspace(0.0, vmax, 6):
        y = int(round((1.0 - tick / vmax) * (height - 1)))
        cv2.line(bar, (18, y), (22, y), (0, 0, 0), 1)
        y_text = min(max(y + 4, 10), height - 3)
        cv2.putText(bar, f"{tick:g}", (24, y_text), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(bar, "px", (24, height // 2), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def side_by_side(image_bgr: np.ndarray, sigma: np.ndarray, vmax: float = SIGMA_MAX) -> np.ndarray:
    """Input frame | colour map | scale bar, one BGR picture for people."""
    h, w = image_bgr.shape[:2]
    if sigma.shape != (h, w):
        sigma = cv2.resize(sigma, (w, h), interpolation=cv2.INTER_NEAREST)
    return np.concatenate([image_bgr, colorize(sigma, vmax), scale_bar(h, vmax)], axis=1)
