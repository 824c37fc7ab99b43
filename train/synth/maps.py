"""Seeded generators of defocus maps (σ in px, within [0, σ_max]).

Random parameters come from a numpy Generator (so a seed fixes them on any device); the maps are
built with torch on the target device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hdme.conventions import SIGMA_MAX

MAP_KINDS = ("patch", "gaussian", "segment", "depth")
# A recipe may draw σ past the network's range (SIGMA_MAX): its output is clamped to that range at
# inference, and a regression trained on a bounded range reads low near the bound, where every
# uncertain guess can only err downwards; labels beyond it put 7–10 px inside the trained range.
LABEL_SIGMA_MAX = 16.0


@dataclass(frozen=True)
class SigmaDistribution:
    """How σ values are drawn: ``uniform`` on [0, max], or ``favour_small``: with probability
    ``small_prob`` uniform on [0, small_max], otherwise uniform on [0, max] (real photos are mostly 0–4 px)."""

    kind: str = "uniform"
    max: float = SIGMA_MAX
    small_max: float = 4.0
    small_prob: float = 0.65

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "favour_small"):
            raise ValueError(f"σ distribution must be 'uniform' or 'favour_small', got {self.kind!r}")
        if not 0.0 < self.max <= LABEL_SIGMA_MAX or not 0.0 < self.small_max <= self.max or not 0.0 <= self.small_prob <= 1.0:
            raise ValueError(f"σ distribution out of range: {self}")

    def sample(self, rng: np.random.Generator, n: int | tuple[int, ...] = 1) -> np.ndarray:
        top = np.full(n, self.max)
        if self.kind == "favour_small":
            top = np.where(rng.random(n) < self.small_prob, self.small_max, self.max)
        return rng.random(n) * top


def _grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(size, dtype=torch.float32, device=device)
    return torch.meshgrid(coords, coords, indexing="ij")


def patch_map(size: int, rng: np.random.Generator, dist: SigmaDistribution, device: torch.device | str = "cpu") -> torch.Tensor:
    """The paper's patch map: split at a point ≥50 px from the border into four, split each again at a
    point ≥20 px from its own border, one σ per each of the 16 regions (margins scale with size/256)."""
    device = torch.device(device)
    outer = max(1, min(round(50 * size / 256), size // 2 - 1))
    inner = max(1, round(20 * size / 256))

    def split(lo: int, hi: int, margin: int) -> int:
        margin = min(margin, max((hi - lo) // 2 - 1, 0))
        return int(rng.integers(lo + margin, hi - margin + 1))

    cy, cx = split(0, size, outer), split(0, size, outer)
    out = torch.empty(size, size, device=device)
    values = torch.tensor(dist.sample(rng, 16), dtype=torch.float32, device=device)
    region = 0
    for y0, y1 in ((0, cy), (cy, size)):
        for x0, x1 in ((0, cx), (cx, size)):
            sy, sx = split(y0, y1, inner), split(x0, x1, inner)
            for yy0, yy1 in ((y0, sy), (sy, y1)):
                for xx0, xx1 in ((x0, sx), (sx, x1)):
                    out[yy0:yy1, xx0:xx1] = values[region]
                    region += 1
    return out


def gaussian_map(size: int, rng: np.random.Generator, dist: SigmaDistribution, device: torch.device | str = "cpu") -> torch.Tensor:
    """Smooth map: a base σ plus 1–4 two-dimensional Gaussian bumps. A third of the bumps have the
    paper's variances (100–200 px² at 256 px), the others are wider (std 10–50 % of the side)."""
    device = torch.device(device)
    ys, xs = _grid(size, device)
    base = float(dist.sample(rng)[0])
    out = torch.full((size, size), base, device=device)
    scale = size / 256.0
    for _ in range(int(rng.integers(1, 5))):
        if rng.random() < 1 / 3:
            sy = sx = math.sqrt(rng.uniform(100.0, 200.0)) * scale
        else:
            sy, sx = rng.uniform(0.1, 0.5, 2) * size
        my, mx = rng.uniform(-0.1, 1.1, 2) * size
        bump = torch.exp(-((ys - my) ** 2) / (2 * sy * sy) - ((xs - mx) ** 2) / (2 * sx * sx))
        out = out + (float(dist.sample(rng)[0]) - base) * bump
    return out.clamp(0.0, dist.max)


def superpixel_labels(image: torch.Tensor, rng: np.random.Generator, regions: tuple[int, int] = (4, 16), iterations: int = 6) -> torch.Tensor:
    """SLIC-like segments of an (unshuffled) RGB image [3,H,W]: k-means on colour and position of a
    smoothed 64-px thumbnail, labels upsampled to full resolution. Returns long [H,W].

    Labels are decided on the thumbnail so that every segment is a spatially coherent region:
    assigning full-resolution pixels by colour scatters a segment over every pixel of that colour,
    a σ map that changes from pixel to pixel, which no image can show."""
    _, h, w = image.shape
    k = int(rng.integers(regions[0], regions[1] + 1))
    compact = float(rng.uniform(1.0, 3.0))  # weight of position against colour: rounder or more colour-led segments

    thumb = F.interpolate(image[None], size=(min(h, 64), min(w, 64)), mode="area")
    thumb = F.avg_pool2d(F.pad(thumb, (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]
    th, tw = thumb.shape[-2:]
    yy = torch.linspace(0, 1, th, device=image.device)[:, None].expand(th, tw)
    xx = torch.linspace(0, 1, tw, device=image.device)[None, :].expand(th, tw)
    pts = torch.cat([thumb.reshape(3, -1), compact * yy.reshape(1, -1), compact * xx.reshape(1, -1)]).T
    centres = pts[torch.from_numpy(rng.choice(pts.shape[0], size=k, replace=False)).to(image.device)]
    for _ in range(iterations):
        assign = torch.cdist(pts, centres).argmin(dim=1)
        counts = torch.bincount(assign, minlength=k).clamp(min=1).to(pts.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, pts)
        centres = torch.where(torch.bincount(assign, minlength=k)[:, None] > 0, sums / counts[:, None], centres)
    labels = torch.cdist(pts, centres).argmin(dim=1).reshape(1, 1, th, tw).float()
    return F.interpolate(labels, size=(h, w), mode="nearest")[0, 0].long()


def segment_map(labels: torch.Tensor, rng: np.random.Generator, dist: SigmaDistribution) -> torch.Tensor:
    """One σ per region of a label map (long [H,W]: superpixels or COCO masks)."""
    n = int(labels.max()) + 1
    values = torch.tensor(dist.sample(rng, n), dtype=torch.float32, device=labels.device)
    return values[labels]


def thin_lens_sigma(inv_depth: torch.Tensor, inv_focus: float, k: float) -> torch.Tensor:
    """Thin lens: σ = k·|1/d_f − 1/d|, written in inverse depth."""
    return k * (inv_depth - inv_focus).abs()


def scale_to_sigma_max(inv_depth: torch.Tensor, inv_focus: float, sigma_max: float) -> torch.Tensor:
    """Thin-lens σ with the lens constant k chosen so that the largest σ in the map is ``sigma_max``."""
    spread = float((inv_depth - inv_focus).abs().max())
    return thin_lens_sigma(inv_depth, inv_focus, sigma_max / spread if spread > 1e-6 else 0.0)


def smooth_noise(size: int, rng: np.random.Generator, cells: int, device: torch.device) -> torch.Tensor:
    """Band-limited noise in [-1, 1]: a random cells×cells grid upsampled bicubically to size×size."""
    grid = torch.from_numpy(rng.uniform(-1.0, 1.0, (1, 1, cells, cells)).astype(np.float32)).to(device)
    return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)[0, 0].clamp(-1.0, 1.0)


def synthetic_inverse_depth(size: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Inverse depth in [0, 1] of a made-up scene: a tilted plane, sometimes a second plane behind a
    straight step, plus smooth noise at a random scale."""
    device = torch.device(device)
    ys, xs = _grid(size, device)
    ys, xs = ys / size, xs / size
    a, b = rng.uniform(-1.0, 1.0, 2)
    inv = a * xs + b * ys
    if rng.random() < 0.4:
        angle, offset = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.8)
        side = (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle) > offset - 0.5
        c, d = rng.uniform(-1.0, 1.0, 2)
        inv = torch.where(side, c * xs + d * ys + rng.uniform(-0.5, 0.5), inv)
    inv = inv + rng.uniform(0.0, 0.6) * smooth_noise(size, rng, int(rng.integers(2, 9)), device)
    lo, hi = inv.min(), inv.max()
    return (inv - lo) / (hi - lo).clamp(min=1e-6)


def depth_map(size: int, rng: np.random.Generator, dist: SigmaDistribution, device: torch.device | str = "cpu") -> torch.Tensor:
    """Thin-lens σ of a synthetic depth map with the focus plane somewhere inside the depth range."""
    inv = synthetic_inverse_depth(size, rng, device)
    sigma_max = max(float(dist.sample(rng)[0]), 0.5)
    return scale_to_sigma_max(inv, float(rng.random()), sigma_max).clamp(0.0, dist.max)


def make_map(kind: str, size: int, rng: np.random.Generator, dist: SigmaDistribution, source: torch.Tensor | None = None,
             labels: torch.Tensor | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """One σ map [H,W] of ``kind``; ``segment`` needs ``labels`` or the unshuffled ``source`` [3,H,W]."""
    if kind == "patch":
        return patch_map(size, rng, dist, device)
    if kind == "gaussian":
        return gaussian_map(size, rng, dist, device)
    if kind == "depth":
        return depth_map(size, rng, dist, device)
    if kind == "segment":
        if labels is None:
            if source is None:
                raise ValueError("segment maps need a source image or a label map")
            labels = superpixel_labels(source.to(device), rng)
        return segment_map(labels.to(device), rng, dist)
    raise ValueError(f"map kind must be one of {MAP_KINDS}, got {kind!r}")
