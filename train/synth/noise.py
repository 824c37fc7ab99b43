"""Sensor noise models applied to rendered batches (the η of Eq. 4).

``paper``: salt-and-pepper, Poisson or additive Gaussian, as in the authors' repository.
``camera``: Poisson shot noise with a random gain, Gaussian read noise, optionally a Bayer mosaic
with bilinear demosaicing (its softness), and JPEG at a random quality.

Every per-sample choice is drawn first, on the CPU from a numpy Generator (``draw_noise``), so a
seed fixes them on any device; ``noise_batch`` then applies them to the whole batch at once with
torch on the batch's device. JPEG is modelled in torch as baseline libjpeg does it: YCbCr with
4:2:0 chroma, 8×8 DCT quantised with the standard tables scaled by the quality, fancy
(triangular) chroma upsampling and 8-bit output.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hdme.jpeg import libjpeg_tables

NOISE_MODELS = ("none", "paper", "camera")
# Per-sample noise kinds of a NoiseDraw.
CLEAN, SALT_PEPPER, POISSON, GAUSSIAN, CAMERA = range(5)


@dataclass
class NoiseDraw:
    """The noise of each sample of a batch: kind (CLEAN … CAMERA), its strength (salt-and-pepper
    share, photons at white, or Gaussian std), camera read noise, Bayer round trip, and JPEG
    quality (0 = not compressed)."""

    kind: np.ndarray  # int64 [B]
    strength: np.ndarray  # float64 [B]
    read: np.ndarray  # float64 [B]
    bayer: np.ndarray  # bool [B]
    jpeg_quality: np.ndarray  # int64 [B]


def jpeg_quality_problem(quality) -> str | None:
    """Why ``quality`` is not a [lo, hi] range of JPEG qualities, or None when it is one."""
    if not (isinstance(quality, (list, tuple)) and len(quality) == 2
            and all(isinstance(q, int) and not isinstance(q, bool) for q in quality)
            and 1 <= quality[0] <= quality[1] <= 100):
        return "jpeg_quality must be [lo, hi], whole numbers with 1 ≤ lo ≤ hi ≤ 100"
    return None


def draw_noise(count: int, model: str, rng: np.random.Generator, probability: float = 1.0,
               jpeg_probability: float = 0.0, bayer_probability: float = 0.5,
               jpeg_quality: tuple[int, int] = (60, 95)) -> NoiseDraw:
    """Each sample is noised with ``probability`` and JPEG-compressed (quality uniform on
    ``jpeg_quality``) with ``jpeg_probability``; camera noise takes a gain of 30 to 1000 photons at white, read noise of
    0.001–0.01 and a Bayer round trip with ``bayer_probability``."""
    if model not in NOISE_MODELS:
        raise ValueError(f"noise model must be one of {NOISE_MODELS}, got {model!r}")
    draw = NoiseDraw(np.zeros(count, np.int64), np.zeros(count), np.zeros(count), np.zeros(count, bool),
                     np.zeros(count, np.int64))
    for i in range(count):
        if model != "none" and rng.random() < probability:
            if model == "paper":
                choice = int(rng.integers(3))
                draw.kind[i] = (SALT_PEPPER, POISSON, GAUSSIAN)[choice]
                draw.strength[i] = rng.uniform(*((0.002, 0.02), (50.0, 500.0), (0.005, 0.03))[choice])
            else:
                draw.kind[i] = CAMERA
                draw.strength[i] = np.exp(rng.uniform(np.log(30.0), np.log(1000.0)))
                draw.read[i] = rng.uniform(0.001, 0.01)
                draw.bayer[i] = rng.random() < bayer_probability
        if rng.random() < jpeg_probability:
            draw.jpeg_quality[i] = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
    return draw


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _per_sample(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)[:, None, None, None]


def _poisson(x: torch.Tensor, photons: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    rate = (x.clamp(0.0, 1.0) * photons).to(_gen_device(generator, x.device))
    return torch.poisson(rate, generator=generator).to(x.device) / photons


def _normal_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=_gen_device(generator, x.device)).to(x.device)


def bayer_demosaic(img: torch.Tensor) -> torch.Tensor:
    """Sample an RGGB mosaic from [3,H,W] or [B,3,H,W] and rebuild RGB by bilinear interpolation."""
    batch = img if img.dim() == 4 else img[None]
    h, w = batch.shape[-2:]
    mask = torch.zeros(3, h, w, device=img.device, dtype=img.dtype)
    mask[0, 0::2, 0::2] = 1
    mask[1, 0::2, 1::2] = 1
    mask[1, 1::2, 0::2] = 1
    mask[2, 1::2, 1::2] = 1
    rb = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=img.dtype, device=img.device) / 4
    g = torch.tensor([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=img.dtype, device=img.device) / 4
    kernels = torch.stack([rb, g, rb])[:, None]
    sparse = F.pad(batch * mask, (1, 1, 1, 1), mode="reflect")
    out = F.conv2d(sparse, kernels, groups=3)
    return out if img.dim() == 4 else out[0]


@functools.lru_cache(maxsize=4)
def _dct_matrix(device: str) -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis.float().to(device)


def quantisation_tables(quality: torch.Tensor) -> torch.Tensor:
    """libjpeg's tables for integer qualities [B] (1–100): [B, 2 (luma, chroma), 8, 8]."""
    tables = np.stack([libjpeg_tables(q) for q in quality.tolist()])
    return torch.from_numpy(tables).float().to(quality.device)


def _dct_quantise(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[B,H,W] level-shifted samples (H, W multiples of 8) through 8×8 DCT, quantisation with the
    per-sample table [B,8,8] and the inverse DCT."""
    b, h, w = plane.shape
    d = _dct_matrix(str(plane.device))
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8)
    coef = torch.einsum("ui,byixj,vj->byuxv", d, blocks, d)
    t = table[:, None, :, None, :]
    coef = torch.round(coef / t) * t
    return torch.einsum("ui,byuxv,vj->byixj", d, coef, d).reshape(b, h, w)


def _upsample_chroma(plane: torch.Tensor) -> torch.Tensor:
    # libjpeg's fancy upsampling weighs the nearer sample 3/4 and the farther 1/4: a 2× bilinear resize
    return F.interpolate(plane[:, None], scale_factor=2, mode="bilinear", align_corners=False)[:, 0]


def jpeg(batch: torch.Tensor, quality: torch.Tensor | int) -> torch.Tensor:
    """Round-trip RGB [B,3,H,W] or [3,H,W] (0..1) through baseline JPEG at ``quality``, one for all
    or one per sample [B]."""
    single = batch.dim() == 3
    x = batch[None] if single else batch
    b, _, h, w = x.shape
    tables = quantisation_tables(torch.as_tensor(quality, device=x.device).expand(b))
    rgb = torch.round(x.clamp(0.0, 1.0).float() * 255.0)
    # Edges replicated to whole 16-px MCUs, as libjpeg pads.
    ph, pw = -h % 16, -w % 16
    rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
    r, g, bl = rgb.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = torch.round(-0.168735892 * r - 0.331264108 * g + 0.5 * bl)
    cr = torch.round(0.5 * r - 0.418687589 * g - 0.081312411 * bl)
    y = _dct_quantise(torch.round(y) - 128.0, tables[:, 0]) + 128.0
    # 8-bit samples at every stage, as the codec stores them
    cb = _upsample_chroma(torch.round(_dct_quantise(torch.round(F.avg_pool2d(cb[:, None], 2)[:, 0]), tables[:, 1])))
    cr = _upsample_chroma(torch.round(_dct_quantise(torch.round(F.avg_pool2d(cr[:, None], 2)[:, 0]), tables[:, 1])))
    y = torch.round(y)
    out = torch.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], dim=1)
    out = (torch.round(out).clamp(0.0, 255.0) / 255.0)[..., :h, :w].to(batch.dtype)
    return out[0] if single else out


def noise_batch(batch: torch.Tensor, draw: NoiseDraw, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply ``draw`` to ``batch`` [B,3,H,W] on its device; the result is clipped to [0, 1]."""
    out = batch.clone()

    def rows(mask: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        idx = np.flatnonzero(mask)
        return idx, torch.from_numpy(idx).to(batch.device)

    idx, at = rows(np.isin(draw.kind, (POISSON, CAMERA)))
    if len(idx):
        out[at] = _poisson(out[at], _per_sample(draw.strength[idx], out), generator)
    idx, at = rows(np.isin(draw.kind, (GAUSSIAN, CAMERA)))
    if len(idx):
        std = np.where(draw.kind[idx] == CAMERA, draw.read[idx], draw.strength[idx])
        out[at] = out[at] + _per_sample(std, out) * _normal_like(out[at], generator)
    idx, at = rows(draw.kind == SALT_PEPPER)
    if len(idx):
        u = torch.rand((len(idx), 1, *batch.shape[-2:]), generator=generator,
                       device=_gen_device(generator, batch.device)).to(batch.device)
        half = _per_sample(draw.strength[idx], out) / 2
        out[at] = torch.where(u < half, 0.0, torch.where(u > 1.0 - half, 1.0, out[at]))
    idx, at = rows(draw.bayer)
    if len(idx):
        out[at] = bayer_demosaic(out[at])
    out = out.clamp(0.0, 1.0)
    idx, at = rows(draw.jpeg_quality > 0)
    if len(idx):
        out[at] = jpeg(out[at], torch.from_numpy(draw.jpeg_quality[idx]).to(batch.device))
    return out
