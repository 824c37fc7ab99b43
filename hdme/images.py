"""Robust image reading: every failure becomes one clear line (HdmeError)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from hdme.errors import HdmeError
from hdme.io import make_folder
from hdme.native import captured_native_stderr

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
MIN_SIDE = 8


def size_text(h: int, w: int) -> str:
    """A size as every message and option writes it: height first (HxW), as --size takes it."""
    return f"{h}x{w}"


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


# Left in every folder `hdme predict` or `hdme run` writes maps to: its pictures are not photos to read again.
PREDICTION_MARKER = ".hdme-predictions"


def make_prediction_folder(path: str | os.PathLike) -> Path:
    """Create a folder for σ maps (``make_folder``) and mark it, so that ``list_images`` of a folder
    above it leaves the maps out."""
    folder = make_folder(path)
    (folder / PREDICTION_MARKER).touch()
    return folder


def list_images(folder: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """Image files in ``folder`` (recursively), sorted by path; hidden files and folders (among
    them the temporary files of an interrupted atomic write), anything inside ``exclude`` and
    subfolders that hold an earlier prediction's output (``PREDICTION_MARKER``) left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HdmeError(f"{folder}: not a folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = list(folder.rglob("*"))
    outputs = {p.parent for p in found if p.name == PREDICTION_MARKER and p.parent != folder}
    return sorted(
        p for p in found
        if p.is_file() and is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (skip is None or skip not in p.resolve().parents)
        and not any(parent in outputs for parent in p.parents)
    )


def expand_inputs(inputs: list[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """Files and folders → a flat list of image paths (folders expanded, order kept). Files found
    in a folder are left out when inside ``exclude`` (an output folder among the inputs)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(list_images(p, exclude))
        else:
            out.append(p)
    return out


def to_rgb8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Any decoded OpenCV image (grey, BGR, BGRA, 16-bit, float) → RGB uint8 H×W×3."""
    if img is None or img.size == 0:
        raise HdmeError(f"{name}: empty image")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        finite = np.isfinite(img)
        if not finite.any():
            raise HdmeError(f"{name}: no finite pixel values (all NaN or infinite)")
        # The range (0–1 or 0–255) is judged on finite pixels: one inf would otherwise turn a
        # 0–1 image into a black one. Non-finite pixels become the range's ends (NaN: 0).
        scale = 255.0 if float(img[finite].max()) <= 1.0 else 1.0
        img = np.nan_to_num(img.astype(np.float32) * scale + 0.5, nan=0.0, posinf=255.0, neginf=0.0)
        img = np.clip(img, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise HdmeError(f"{name}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        # Composite on white: transparent pixels carry no scene, and black would read as a sharp edge.
        bgr = img[..., :3].astype(np.float32)
        alpha = img[..., 3:4].astype(np.float32) / 255.0
        bgr = bgr * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor((bgr + 0.5).astype(np.uint8), cv2.COLOR_BGR2RGB)
    raise HdmeError(f"{name}: unsupported image layout {img.shape}")


def decode_flags(data: np.ndarray) -> int:
    """OpenCV decode flags for an encoded image. JPEGs are decoded so that OpenCV applies their
    EXIF orientation (the layout every viewer shows); other formats keep their alpha channel and
    bit depth, which those flags would drop (JPEGs have neither)."""
    if data[:3].tobytes() == b"\xff\xd8\xff":
        return cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
    return cv2.IMREAD_UNCHANGED


def read_image(path: str | os.PathLike, min_side: int = MIN_SIDE) -> np.ndarray:
    """Read an image file as RGB uint8 H×W×3, or raise HdmeError with one clear line."""
    path = Path(path)
    if not path.exists():
        raise HdmeError(f"{path}: no such file")
    if path.is_dir():
        raise HdmeError(f"{path}: is a folder, not an image")
    if path.suffix.lower() in VIDEO_EXTS:
        raise HdmeError(f"{path}: a video, not an image")
    if path.suffix.lower() not in IMAGE_EXTS:
        raise HdmeError(f"{path}: unsupported format '{path.suffix}' (expected one of {', '.join(sorted(IMAGE_EXTS))})")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise HdmeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size == 0:
        raise HdmeError(f"{path}: empty file")
    with captured_native_stderr() as native:
        try:
            img = cv2.imdecode(data, decode_flags(data))
        except cv2.error:
            img = None
    if img is None:
        detail = f" ({native.first_line})" if native.first_line else ""
        raise HdmeError(f"{path}: corrupt or unreadable image{detail}")
    rgb = to_rgb8(img, str(path))
    if min(rgb.shape[:2]) < min_side:
        raise HdmeError(f"{path}: image is {size_text(*rgb.shape[:2])}, smaller than {min_side} px on a side")
    return rgb


def write_image(path: str | os.PathLike, img_rgb_or_bgr: np.ndarray, bgr: bool = False) -> Path:
    """Write an 8/16-bit image atomically; ``bgr`` says whether the array is already BGR."""
    from hdme.io import atomic_path

    path = Path(path)
    img = img_rgb_or_bgr
    if img.ndim == 3 and not bgr:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise HdmeError(f"{path}: OpenCV could not write this image format")
    return path


def fit_to_size(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop to ``size`` (H, W); resize only images too small to crop.

    Cropping keeps the pixel statistics of the shuffled crops: resampling a shuffled image would
    blur it, and the activation ranges calibrated on it would not be those the network sees."""
    h, w = size
    ih, iw = rgb.shape[:2]
    if ih < h or iw < w:
        scale = max(h / ih, w / iw)
        rgb = cv2.resize(rgb, (max(w, round(iw * scale)), max(h, round(ih * scale))), interpolation=cv2.INTER_LINEAR)
        ih, iw = rgb.shape[:2]
    top, left = (ih - h) // 2, (iw - w) // 2
    return rgb[top : top + h, left : left + w]
