"""Independent references to check the synthesis against: a brute-force Eq. 4 (numpy, per-pixel
scatter) and OpenCV's JPEG codec."""

from __future__ import annotations

import cv2
import numpy as np


def gaussian_psf(sigma: float) -> np.ndarray:
    """OpenCV's own Gaussian kernel for float images (size round(8σ+1)|1), as a 2-D PSF."""
    if sigma <= 0:
        return np.ones((1, 1))
    k = cv2.getGaussianKernel(int(round(sigma * 8 + 1)) | 1, sigma, cv2.CV_64F)
    return k @ k.T


def scatter_render(sharp: np.ndarray, sigma: np.ndarray, pad: int, psf=gaussian_psf) -> np.ndarray:
    """Every source pixel of ``sharp`` (H×W×C float) spreads with its own PSF ``psf(σ)`` (a centred,
    odd-sided kernel; OpenCV's Gaussian of σ px by default).

    Source and map are reflect-padded by ``pad`` (border handling only; compare away from borders).
    """
    src = np.pad(sharp, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    sig = np.pad(sigma, pad, mode="reflect")
    h, w = sig.shape
    out = np.zeros_like(src, dtype=np.float64)
    cache: dict[float, np.ndarray] = {}
    for y in range(h):
        for x in range(w):
            s = float(sig[y, x])
            k = cache.get(s)
            if k is None:
                k = cache[s] = psf(s)
            r = k.shape[0] // 2
            y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, h), max(x - r, 0), min(x + r + 1, w)
            out[y0:y1, x0:x1] += src[y, x] * k[y0 - y + r : y1 - y + r, x0 - x + r : x1 - x + r, None]
    return out[pad:-pad, pad:-pad]


def gather_render(sharp: np.ndarray, sigma: np.ndarray, pad: int) -> np.ndarray:
    """The common shortcut Eq. 4 is not: every output pixel averages its neighbours with its own σ."""
    src = np.pad(sharp, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = sigma.shape
    out = np.zeros_like(sharp, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            k = gaussian_psf(float(sigma[y, x]))
            r = k.shape[0] // 2
            patch = src[y + pad - r : y + pad + r + 1, x + pad - r : x + pad + r + 1]
            out[y, x] = (patch * k[..., None]).sum(axis=(0, 1))
    return out


def opencv_jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip an RGB uint8 image through OpenCV's JPEG codec."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
