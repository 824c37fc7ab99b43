"""Sensor noise models applied to rendered batches (the η of Eq. 4).

``paper``: salt-and-pepper, Poisson or additive Gaussian, as in the authors' repository.
``camera``: Poisson shot noise with a random gain, Gaussian read noise, optionally a Bayer mosaic
with bilinear demosaicing (its softness), and JPEG at a random quality.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

NOISE_MODELS = ("none", "paper", "camera")


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


def _poisson(x: torch.Tensor, photons: float, generator: torch.Generator | None) -> torch.Tensor:
    rate = (x.clamp(0.0, 1.0) * photons).to(_gen_device(generator, x.device))
    return torch.poisson(rate, generator=generator).to(x.device) / photons


def _normal_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=_gen_device(generator, x.device)).to(x.device)


def paper_noise(img: torch.Tensor, rng: np.random.Generator, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of salt-and-pepper, Poisson or additive Gaussian noise on one image [3,H,W]."""
    choice = rng.integers(3)
    if choice == 0:
        amount = rng.uniform(0.002, 0.02)
        u = torch.rand(img.shape[-2:], generator=generator, device=_gen_device(generator, img.device)).to(img.device)
        out = img.clone()
        out[:, u < amount / 2] = 0.0
        out[:, u > 1.0 - amount / 2] = 1.0
        return out
    if choice == 1:
        return _poisson(img, float(rng.uniform(50.0, 500.0)), generator)
    return img + float(rng.uniform(0.005, 0.03)) * _normal_like(img, generator)


def bayer_demosaic(img: torch.Tensor) -> torch.Tensor:
    """Sample an RGGB mosaic from [3,H,W] and rebuild RGB by bilinear interpolation."""
    _, h, w = img.shape
    mask = torch.zeros(3, h, w, device=img.device, dtype=img.dtype)
    mask[0, 0::2, 0::2] = 1
    mask[1, 0::2, 1::2] = 1
    mask[1, 1::2, 0::2] = 1
    mask[2, 1::2, 1::2] = 1
    rb = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=img.dtype, device=img.device) / 4
    g = torch.tensor([[0, 1, 0], [1, 4, 1], [0, 1, 0]], dtype=img.dtype, device=img.device) / 4
    kernels = torch.stack([rb, g, rb])[:, None]
    sparse = F.pad((img * mask)[None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(sparse, kernels, groups=3)[0]


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip an RGB [3,H,W] image through OpenCV's JPEG codec (on the CPU)."""
    rgb = (img.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode JPEG")
    back = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(back).permute(2, 0, 1).to(img.device, img.dtype) / 255.0


def camera_noise(img: torch.Tensor, rng: np.random.Generator, generator: torch.Generator | None = None,
                 bayer_probability: float = 0.5) -> torch.Tensor:
    """Shot noise (a gain of 30 to 1000 photons at white) plus Gaussian read noise, and a
    Bayer mosaic round trip with probability ``bayer_probability``."""
    photons = float(np.exp(rng.uniform(np.log(30.0), np.log(1000.0))))
    out = _poisson(img, photons, generator)
    out = out + float(rng.uniform(0.001, 0.01)) * _normal_like(img, generator)
    if rng.random() < bayer_probability:
        out = bayer_demosaic(out)
    return out


def apply_noise(batch: torch.Tensor, model: str, rng: np.random.Generator, generator: torch.Generator | None = None,
                probability: float = 1.0, jpeg_probability: float = 0.0, bayer_probability: float = 0.5) -> torch.Tensor:
    """Noise on a batch [B,3,H,W]: each sample is noised with ``probability`` and JPEG-compressed
    (quality 60–95) with ``jpeg_probability``; the result is clipped to [0, 1]."""
    if model not in NOISE_MODELS:
        raise ValueError(f"noise model must be one of {NOISE_MODELS}, got {model!r}")
    out = []
    for img in batch:
        if model != "none" and rng.random() < probability:
            img = paper_noise(img, rng, generator) if model == "paper" else camera_noise(img, rng, generator, bayer_probability)
        img = img.clamp(0.0, 1.0)
        if rng.random() < jpeg_probability:
            img = jpeg(img, int(rng.integers(60, 96)))
        out.append(img)
    return torch.stack(out)
