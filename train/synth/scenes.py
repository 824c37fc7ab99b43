"""Structured synthetic scenes: occluding shapes with sharp edges, flat and textured fills, and a
thin-lens σ map from per-object depth.

Shuffled pixels contain no flat regions, so a net trained on them alone learns "smooth means
blurred". Real photos are full of flat regions whose blur has to be inferred from nearby edges;
these scenes supply them. Shapes are drawn at 4× and area-downsampled so their edges are truly
sharp (σ = 0 before rendering). CPU only (OpenCV/numpy).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import torch

from hdme.train.synth.maps import SigmaDistribution, scale_to_sigma_max, synthetic_inverse_depth
from hdme.train.synth.sharpness import SHARP_THRESHOLD, laplacian_variance

SUPERSAMPLE = 4
_SHIFT = 4  # OpenCV sub-pixel bits for drawing coordinates


def _colour(rng: np.random.Generator) -> np.ndarray:
    c = rng.random(3)
    if rng.random() < 0.4:  # many real surfaces are nearly grey
        c = c.mean() + (c - c.mean()) * rng.uniform(0.0, 0.4)
    return c.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    ys, xs = ys / size, xs / size
    ys.flags.writeable = xs.flags.writeable = False  # shared by every caller
    return ys, xs


def _band_noise(size: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    grid = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _octave_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """Band noise from a coarse scale down to single pixels. Smooth blobs with no fine detail are
    what defocus makes of a textured background; labelled sharp, they taught the net to call blurred
    backgrounds in focus, so an in-focus texture always keeps some detail at the pixel scale."""
    cells = int(np.clip(size / rng.uniform(2.0, 32.0), 2, size))
    persistence, floor = rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.3)
    out, weight = np.zeros((size, size), np.float32), 1.0
    while True:
        out += weight * (_band_noise(size, rng, cells) - 0.5)
        if cells >= size:
            break
        cells, weight = min(cells * 2, size), max(weight * persistence, floor)
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def _pink_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** rng.uniform(0.8, 1.5)
    spectrum[0, 0] = 0.0
    out = np.fft.irfft2(spectrum, s=(size, size)).astype(np.float32)
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def _two_colour(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    a, b = _colour(rng), _colour(rng)
    t = np.clip(t, 0.0, 1.0)[..., None]
    return a * (1.0 - t) + b * t


_WHOLE = (slice(None), slice(None))


def _fill(kind: str, size: int, rng: np.random.Generator, source, window: tuple[slice, slice] = _WHOLE) -> np.ndarray:
    """A size×size×3 float32 texture in [0, 1], or only its ``window`` (rows, columns): the same
    random draws either way, so the window holds the numbers the whole texture would."""
    ys, xs = (c[window] for c in _coords(size))
    if kind == "flat":
        return np.broadcast_to(_colour(rng), (*ys.shape, 3)).copy()
    if kind == "linear":
        angle = rng.uniform(0, 2 * math.pi)
        t = (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle)
        return _two_colour(t * rng.uniform(0.5, 2.0) + 0.5, rng)
    if kind == "radial":
        cy, cx = rng.random(2)
        return _two_colour(np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2) * rng.uniform(0.8, 2.5), rng)
    if kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(3.0, size / 4) / size
        phase = ((xs * math.cos(angle) + ys * math.sin(angle)) / period) % 1.0
        return _two_colour((phase < rng.uniform(0.3, 0.7)).astype(np.float32), rng)
    if kind == "checkers":
        cell = rng.uniform(3.0, size / 6) / size
        return _two_colour(((np.floor(ys / cell) + np.floor(xs / cell)) % 2).astype(np.float32), rng)
    if kind == "noise":
        return _two_colour(_octave_noise(size, rng)[window], rng)
    if kind == "pink":
        return _two_colour(_pink_noise(size, rng)[window], rng)
    if kind == "photo":
        return _sharp_photo(size, rng, source)[window]
    flat = source.sample(rng, size).astype(np.float32).reshape(-1, 3) / 255.0
    return flat[rng.permutation(flat.shape[0])].reshape(size, size, 3)[window]  # "shuffled"


def _sharp_photo(size: int, rng: np.random.Generator, source, tries: int = 4) -> np.ndarray:
    """A photo crop that passes the paper's sharpness bar: scenes label every pixel of a surface
    with its thin-lens σ, so a crop with blur of its own would carry a wrong label. Falls back to
    a shuffled crop (sharp by construction) when no crop passes."""
    for _ in range(tries):
        crop = source.sample(rng, size)
        if laplacian_variance(crop) >= SHARP_THRESHOLD:
            return crop.astype(np.float32) / 255.0
    return _fill("shuffled", size, rng, source)


_BACKGROUND_FILLS = ("flat", "linear", "radial", "noise", "pink", "photo", "stripes", "shuffled")
_BACKGROUND_WEIGHTS = (0.30, 0.15, 0.10, 0.10, 0.08, 0.17, 0.04, 0.06)
_OBJECT_FILLS = ("flat", "linear", "radial", "stripes", "checkers", "noise", "pink", "shuffled", "photo")
_OBJECT_WEIGHTS = (0.28, 0.12, 0.06, 0.08, 0.06, 0.10, 0.08, 0.10, 0.12)
_SHAPES = ("polygon", "ellipse", "blob", "stroke", "text", "rectangle")
_SHAPE_WEIGHTS = (0.22, 0.2, 0.22, 0.14, 0.08, 0.14)


def _shape_mask(kind: str, size: int, rng: np.random.Generator,
                scale: float = 1.0) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Coverage in [0, 1] of one shape, drawn at SUPERSAMPLE× and area-downsampled, and the window
    (rows, columns) outside which it is zero; ``scale`` shrinks its size and stroke widths."""
    big = size * SUPERSAMPLE
    canvas = np.zeros((big, big), np.uint8)
    unit = big * (1 << _SHIFT)

    def pt(p) -> tuple[int, int]:
        return int(p[0] * unit), int(p[1] * unit)

    centre = rng.uniform(-0.1, 1.1, 2)
    radius = rng.uniform(0.05, 0.45) * scale
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        r = radius * rng.uniform(0.5, 1.0, n)
        pts = np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)], 1)
        cv2.fillPoly(canvas, [np.array([pt(p) for p in pts], np.int32)], 255, cv2.LINE_8, _SHIFT)
    elif kind == "blob":
        theta = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        r = np.ones_like(theta)
        for harmonic in range(2, 6):
            r += rng.uniform(0, 0.25) * np.cos(harmonic * theta + rng.uniform(0, 2 * math.pi))
        r *= radius
        pts = np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], 1)
        cv2.fillPoly(canvas, [np.array([pt(p) for p in pts], np.int32)], 255, cv2.LINE_8, _SHIFT)
    elif kind == "ellipse":
        axes = (int(radius * unit), int(radius * rng.uniform(0.2, 1.0) * unit))
        cv2.ellipse(canvas, pt(centre), axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_8, _SHIFT)
    elif kind == "rectangle":
        w, h = radius * rng.uniform(0.3, 1.0, 2)
        box = cv2.boxPoints(((centre[0], centre[1]), (2 * w, 2 * h), rng.uniform(0, 90)))
        cv2.fillPoly(canvas, [np.array([pt(p) for p in box], np.int32)], 255, cv2.LINE_8, _SHIFT)
    elif kind == "stroke":
        n = int(rng.integers(2, 6))
        pts = centre + np.cumsum(rng.normal(0, radius, (n, 2)), axis=0)
        thickness = max(1, int(rng.uniform(0.5, 8.0) * scale * SUPERSAMPLE))
        cv2.polylines(canvas, [np.array([pt(p) for p in pts], np.int32)], False, 255, thickness, cv2.LINE_8, _SHIFT)
    else:  # text
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnpqrstuvwxyz0123456789"
        text = "".join(rng.choice(list(letters), int(rng.integers(2, 9))))
        font_scale = rng.uniform(0.4, 2.5) * scale * size / 256 * SUPERSAMPLE
        org = (int(rng.uniform(-0.1, 0.8) * big), int(rng.uniform(0.1, 1.0) * big))
        cv2.putText(canvas, text, org, int(rng.choice([0, 1, 2, 3, 4, 6, 7])), font_scale, 255,
                    max(1, int(font_scale * rng.uniform(1.0, 3.0))), cv2.LINE_8)
    # Only the shape's bounding box is downsampled: area averaging over whole SUPERSAMPLE blocks
    # gives the same numbers there, and zero elsewhere.
    x, y, w, h = cv2.boundingRect(canvas)
    x0, y0 = x // SUPERSAMPLE, y // SUPERSAMPLE
    x1, y1 = -(-(x + w) // SUPERSAMPLE), -(-(y + h) // SUPERSAMPLE)
    window = (slice(y0, y1), slice(x0, x1))
    alpha = np.zeros((size, size), np.float32)
    if x1 > x0 and y1 > y0:
        block = canvas[y0 * SUPERSAMPLE : y1 * SUPERSAMPLE, x0 * SUPERSAMPLE : x1 * SUPERSAMPLE]
        alpha[window] = cv2.resize(block, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return alpha, window


def draw_scene(size: int, rng: np.random.Generator, source, dist: SigmaDistribution,
               fine: bool = False, depth_field: bool = False,
               field_sigma_max: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One all-in-focus scene (RGB uint8 size×size×3) and its thin-lens σ map (float32 px).

    The background is a plane or ramp in inverse depth; 3–15 shapes are stacked in front of it,
    later shapes nearer. The focus plane lies inside the depth range (often on an object), so some
    regions are in focus and σ is piecewise smooth with jumps exactly at occlusion boundaries.
    ``fine`` scenes stack 12–40 shapes at 0.15–0.5× the size, so that dense edges occur at every
    blur: the density of edges must not tell the network how blurred they are.
    ``depth_field`` scenes put the shapes in front of a photo on a smooth depth field (planes, steps,
    undulation), so that σ varies across wide textured backgrounds as in shallow depth-of-field
    photos; a plane behind flat or synthetic fills never shows a large blur varying over a photo.
    ``field_sigma_max`` (lo, hi) makes a field scene: the photo's depth field spans the whole depth
    range, up to 4 shapes rest on it (each at the field's depth where it stands, a little nearer;
    with ``fine``, 24–80 small ones, as foliage, gravel or a crowd cover a ground plane),
    and the largest σ, drawn from [lo, hi], is reached across the frame, so σ changes gradually
    from sharp to heavily blurred within one image, as it does on a ground plane or a slanted wall.
    The other scenes' σ jumps between objects at unrelated depths, and their background fields span
    a third of the range: with only those, σ that varies smoothly over a wide range read 30 % low
    at 7–10 px.
    """
    ys, xs = _coords(size)
    field = field_sigma_max is not None
    if depth_field or field:
        image = _sharp_photo(size, rng, source)
        inv_depth = (1.0 if field else 0.3) * synthetic_inverse_depth(size, rng).numpy().astype(np.float32)
    else:
        image = _fill(str(rng.choice(_BACKGROUND_FILLS, p=_BACKGROUND_WEIGHTS)), size, rng, source)
        a, b = rng.uniform(-0.3, 0.3, 2)
        inv_depth = np.clip(rng.uniform(0.0, 0.3) + a * xs + b * ys, 0.0, None).astype(np.float32)
    if fine:
        n = int(rng.integers(24, 81)) if field else int(rng.integers(12, 41))
    else:
        n = int(rng.integers(0, 5)) if field else int(rng.integers(3, 16))
    object_depths = np.sort(rng.uniform(0.2, 1.0, n))
    for depth in object_depths:
        scale = rng.uniform(0.15, 0.5) if fine else 1.0
        alpha, window = _shape_mask(str(rng.choice(_SHAPES, p=_SHAPE_WEIGHTS)), size, rng, scale)
        if not alpha[window].any():
            continue
        # Filled and composited inside the shape's window only: outside it the coverage is zero.
        fill = _fill(str(rng.choice(_OBJECT_FILLS, p=_OBJECT_WEIGHTS)), size, rng, source, window)
        a, image_w, inv_w = alpha[window][..., None], image[window], inv_depth[window]
        image[window] = image_w * (1.0 - a) + fill * a
        if field:
            inside = a[..., 0] > 0.5
            depth = float(np.median(inv_w[inside])) + rng.uniform(0.02, 0.1) if inside.any() else depth
        tilt = rng.uniform(-0.1, 0.1, 2) if rng.random() < 0.3 else (0.0, 0.0)
        plane = depth + tilt[0] * (xs[window] - 0.5) + tilt[1] * (ys[window] - 0.5)
        inv_depth[window] = np.where(a[..., 0] > 0.5, plane, inv_w)
    if field:
        focus = rng.uniform(inv_depth.min(), inv_depth.max())
        sigma_max = rng.uniform(*field_sigma_max)
    else:
        focus = float(rng.choice(object_depths)) if rng.random() < 0.6 else rng.uniform(inv_depth.min(), inv_depth.max())
        sigma_max = max(float(dist.sample(rng)[0]), 0.5)
    sigma = scale_to_sigma_max(torch.from_numpy(inv_depth), focus, sigma_max).clamp(0.0, dist.max).numpy().astype(np.float32)
    rgb = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgb, sigma
