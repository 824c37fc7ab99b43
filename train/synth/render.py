"""Eq. 4 as a scatter: every source pixel spreads with its own PSF.

Layered decomposition: σ² is split between the two neighbouring levels of a σ grid with weights
linear in variance, so each pixel's mixture keeps its second moment; each weighted layer is
blurred with its level's kernel and the layers are summed. The blurs run in the Fourier domain
(one forward FFT per level, one inverse FFT in all) on a reflect-padded canvas.

Every PSF shape is labelled by its second-moment σ (per axis): a disc of radius r has σ ≈ r/2.
Shapes: ``gaussian``; ``disc`` (a circular aperture); ``mixture`` (a disc softened by a Gaussian);
``pentagon`` and ``octagon`` (five- and eight-bladed irises); ``dimrim`` (a disc darker towards its
rim, as under-corrected spherical aberration makes it); ``brightrim`` (a disc twice as bright at its
rim as at its centre, as over-corrected spherical aberration makes it); ``hexagon`` (a six-bladed
iris); ``ring`` (a disc four times as bright at its rim, over-correction taken further). Training
recipes draw from the first seven; ``hexagon`` and ``ring`` stay out of them, for the evaluation sets
away from the training mix.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from hdme.conventions import SIGMA_MAX

PSF_SHAPES = ("gaussian", "disc", "mixture", "pentagon", "octagon", "dimrim", "brightrim", "hexagon", "ring")
# The σ grid is placed so that ‖two-level mixture − exact Gaussian kernel‖₁ ≤ max_error for every
# σ: then for any image in [0, 1] and any σ map the render is within about max_error of a per-pixel
# brute-force scatter (a constant map would allow twice that, as a kernel difference sums to zero).
MAX_RENDER_ERROR = 1.0 / 255.0
_MIXTURE_GAUSS_FRACTION = 0.5  # soft disc: σ_gauss = 0.5·σ, σ_disc = √(1 − 0.25)·σ
_IRIS_TURN = 0.2  # rad: the iris's blades are not aligned with the pixel grid
_IRIS_BLADES = {"pentagon": 5, "hexagon": 6, "octagon": 8}
# Apertures whose weight changes with r² from the centre to the rim: (centre, rim).
_PROFILES = {"ring": (0.25, 1.0), "brightrim": (0.5, 1.0), "dimrim": (1.0, 0.3)}
_APERTURE_MIN_SIGMA = 1.0  # px: smaller iris and profiled PSFs are an impulse mixed with this one


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] → linear light (the IEC 61966-2-1 curve)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light → sRGB-encoded values in [0, 1], clipped as a camera's output is."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.pow(1.0 / 2.4) - 0.055)


def scale_contrast(image: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Pull each image of a [B,C,H,W] batch toward its mean grey: its deviation from the mean times
    ``factor`` (per image, in (0, 1]), so the values stay in [0, 1] and the colours keep their hue."""
    factor = torch.as_tensor(factor, dtype=image.dtype, device=image.device).reshape(-1, 1, 1, 1)
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (image - mean)


def zoom_in(maps: torch.Tensor, factor: torch.Tensor, offset: torch.Tensor, mode: str) -> torch.Tensor:
    """A window of 1/``factor`` of each [B,C,S,S] map's side, enlarged back to S×S (``mode`` as
    ``grid_sample``'s). ``offset`` [B,2] in [0, 1] places the window's corner along x and y
    within the room the window leaves; a factor of 1 keeps the map (up to interpolation)."""
    factor = factor.to(maps.dtype).reshape(-1)
    scale = 1.0 / factor
    # window centre in normalised coordinates: the corner at offset·(1 − 1/f) of the side, plus half a window
    centre = (offset.to(maps.dtype) * (1.0 - scale[:, None]) + 0.5 * scale[:, None]) * 2.0 - 1.0
    theta = torch.zeros(len(maps), 2, 3, dtype=maps.dtype, device=maps.device)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = centre
    grid = F.affine_grid(theta, list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode=mode, padding_mode="border", align_corners=False)


def _step_spread(factor: torch.Tensor, size: int, phases: int) -> torch.Tensor:
    """Squared spread (the second moment of the derivative) of ideal steps at ``phases`` sub-pixel
    positions, area-sampled as a sensor samples them, after ``zoom_in`` enlarges them by each
    factor [B]; averaged over the positions, float64 [B]."""
    position = size / 2 + torch.arange(phases, dtype=torch.float32) / phases
    edges = (torch.arange(size, dtype=torch.float32) + 1 - position[:, None]).clamp(0.0, 1.0)  # [P, size]
    steps = edges[:, None, None, :].expand(phases, 1, size, size).repeat(len(factor), 1, 1, 1)
    d = zoom_in(steps, factor.repeat_interleave(phases), torch.full((len(steps), 2), 0.5), "bicubic")
    d = d[:, 0].mean(dim=1).double().diff(dim=1).clamp(min=0.0)
    x = torch.arange(d.shape[1], dtype=torch.float64)
    mean = (d * x).sum(dim=1, keepdim=True) / d.sum(dim=1, keepdim=True)
    return ((d * (x - mean) ** 2).sum(dim=1) / d.sum(dim=1)).reshape(len(factor), phases).mean(dim=1)


@functools.lru_cache(maxsize=4)
def _unenlarged_step_spread(size: int, phases: int) -> float:
    # the same for every batch: computed once, not on each batch the stream enlarges
    return float(_step_spread(torch.ones(1), size, phases)[0])


def enlargement_blur(factor: torch.Tensor, size: int = 64, phases: int = 8) -> torch.Tensor:
    """The blur ``zoom_in`` adds by enlarging, px at the output's scale, one per factor [B]: the
    spread of enlarged ideal steps (``_step_spread``) in quadrature less the unenlarged steps'.
    Content in focus at the rendered scale is this much blurred once enlarged: 0.55 px at 1.25×,
    0.95 px at 2×, 1.2 px at 2.5×."""
    factor = factor.float().cpu().reshape(-1)
    return (_step_spread(factor, size, phases) - _unenlarged_step_spread(size, phases)).clamp(min=0.0).sqrt().float()


def gaussian_radius(sigma: float) -> int:
    """Half-width of OpenCV's Gaussian kernel for float images: ksize = round(8σ + 1) | 1."""
    return (int(round(sigma * 8 + 1)) | 1) // 2


def gaussian_kernel_1d(sigma: float) -> np.ndarray:
    """OpenCV's sampled, normalised Gaussian (cv2.getGaussianKernel with its float-image size)."""
    if sigma <= 0:
        return np.ones(1)
    r = gaussian_radius(sigma)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def gaussian_kernel(sigma: float) -> np.ndarray:
    k = gaussian_kernel_1d(sigma)
    return np.outer(k, k)


def _disc_coverage(radius: float, supersample: int = 16) -> np.ndarray:
    """Anti-aliased pillbox: each pixel's area inside the circle, normalised to sum 1."""
    half = int(np.ceil(radius + 0.5))
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    centres = np.arange(-half, half + 1, dtype=np.float64)
    sub = (centres[:, None] + offs[None, :]).reshape(-1)
    inside = (sub[:, None] ** 2 + sub[None, :] ** 2) <= radius * radius
    n = 2 * half + 1
    cover = inside.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    return cover / cover.sum()


def second_moment_sigma(kernel: np.ndarray) -> float:
    """Per-axis standard deviation of a centred 2-D kernel."""
    r = kernel.shape[0] // 2
    x = np.arange(-r, r + 1, dtype=np.float64)
    return float(np.sqrt((kernel.sum(axis=0) * x * x).sum() / kernel.sum()))


@functools.lru_cache(maxsize=None)
def disc_kernel(sigma: float) -> np.ndarray:
    """Pillbox whose discrete second moment is σ, radius found by bisection.

    Sampling at pixel centres loses the within-pixel variance 1/12, so r ≈ 2·√(σ² + 1/12); the
    search brackets that guess.
    """
    if sigma <= 0:
        return np.ones((1, 1))
    guess = 2.0 * np.sqrt(sigma * sigma + 1.0 / 12.0)
    lo, hi = max(guess - 0.6, 0.0), guess + 0.6
    for _ in range(16):
        mid = 0.5 * (lo + hi)
        if second_moment_sigma(_disc_coverage(mid)) < sigma:
            lo = mid
        else:
            hi = mid
    return _disc_coverage(0.5 * (lo + hi))


def _aperture_kernel(weight, radius: float, supersample: int = 8) -> np.ndarray:
    """An anti-aliased aperture of outer radius ``radius``: each pixel's mean of ``weight(x, y)``
    (0 outside the aperture) over a supersampled grid, normalised to sum 1."""
    half = int(np.ceil(radius + 0.5))
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    sub = (np.arange(-half, half + 1, dtype=np.float64)[:, None] + offs[None, :]).reshape(-1)
    n = 2 * half + 1
    cover = weight(sub[None, :], sub[:, None]).reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    return cover / cover.sum()


def _iris_weight(blades: int):
    """Inside a regular polygon of ``blades`` sides and circumradius ``radius``, turned by _IRIS_TURN."""
    def make(radius: float):
        apothem = radius * np.cos(np.pi / blades)
        normals = [(np.cos(_IRIS_TURN + 2 * np.pi * k / blades), np.sin(_IRIS_TURN + 2 * np.pi * k / blades))
                   for k in range(blades)]
        return lambda x, y: np.all([x * c + y * s <= apothem for c, s in normals], axis=0).astype(np.float64)

    return make


def _profile_weight(centre: float, rim: float):
    """A disc of radius ``radius`` whose weight goes with r² from ``centre`` at the middle to ``rim`` at the edge."""
    def make(radius: float):
        def weight(x, y):
            r2 = (x * x + y * y) / (radius * radius)
            return np.where(r2 <= 1.0, centre + (rim - centre) * r2, 0.0)

        return weight

    return make


def _fitted_aperture(make_weight, sigma: float, radius_per_sigma: float) -> np.ndarray:
    """The aperture of ``make_weight(radius)`` whose discrete second moment is σ, its radius found by
    bisection around ``radius_per_sigma``·σ (plus the within-pixel variance that sampling loses)."""
    if sigma <= 0:
        return np.ones((1, 1))
    if sigma < _APERTURE_MIN_SIGMA:
        # Below a pixel or so, sampling makes σ jump with the radius; an impulse mixed with the
        # aperture of _APERTURE_MIN_SIGMA keeps the shape and sets σ² exactly (variances mix linearly).
        kernel = _fitted_aperture(make_weight, _APERTURE_MIN_SIGMA, radius_per_sigma)
        kernel = kernel * (sigma / second_moment_sigma(kernel)) ** 2
        kernel[kernel.shape[0] // 2, kernel.shape[1] // 2] += 1.0 - kernel.sum()
        return kernel
    guess = radius_per_sigma * np.sqrt(sigma * sigma + 1.0 / 12.0)
    lo, hi = max(guess * 0.7 - 0.5, 0.0), guess * 1.3 + 0.5
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        if second_moment_sigma(_aperture_kernel(make_weight(mid), mid)) < sigma:
            lo = mid
        else:
            hi = mid
    radius = 0.5 * (lo + hi)
    return _aperture_kernel(make_weight(radius), radius)


@functools.lru_cache(maxsize=None)
def psf_kernel(shape: str, sigma: float) -> np.ndarray:
    if shape == "gaussian":
        return gaussian_kernel(sigma)
    if shape == "disc":
        return disc_kernel(sigma)
    if shape == "mixture":
        gauss = gaussian_kernel_1d(_MIXTURE_GAUSS_FRACTION * sigma)
        # second moments add under convolution; a small sampled Gaussian has less than its nominal σ²
        gauss_var = second_moment_sigma(np.outer(gauss, gauss)) ** 2
        disc = disc_kernel(float(np.sqrt(max(sigma * sigma - gauss_var, 0.0))))
        r = gauss.size // 2
        padded = np.pad(disc, r)
        return cv2.sepFilter2D(padded, cv2.CV_64F, gauss, gauss, borderType=cv2.BORDER_CONSTANT)
    if shape in _IRIS_BLADES:
        # a regular n-gon of circumradius R has per-axis variance R²·(1 + 2·cos²(π/n)) / 12
        n = _IRIS_BLADES[shape]
        return _fitted_aperture(_iris_weight(n), sigma, np.sqrt(12.0 / (1.0 + 2.0 * np.cos(np.pi / n) ** 2)))
    if shape in _PROFILES:
        # weight c + (d − c)·ρ² on the unit disc: per-axis variance R²·(c/4 + (d − c)/6) / (c/2 + (d − c)/4) / 2
        c, d = _PROFILES[shape]
        return _fitted_aperture(_profile_weight(c, d), sigma, 1.0 / np.sqrt((c / 4 + (d - c) / 6) / (c / 2 + (d - c) / 4) / 2))
    raise ValueError(f"PSF shape must be one of {PSF_SHAPES}, got {shape!r}")


def _interpolation_error(lo: float, hi: float, sigma: float, shape: str = "gaussian") -> float:
    w = (sigma * sigma - lo * lo) / (hi * hi - lo * lo)
    # Uncached: the grid search tries thousands of σ that are never rendered with.
    k_lo, k_hi, k = (psf_kernel.__wrapped__(shape, float(s)) for s in (lo, hi, sigma))
    n = max(k_lo.shape[0], k_hi.shape[0], k.shape[0])
    pad = lambda a: np.pad(a, (n - a.shape[0]) // 2)  # noqa: E731 - local helper on centred kernels
    return float(np.abs((1 - w) * pad(k_lo) + w * pad(k_hi) - pad(k)).sum())


@functools.lru_cache(maxsize=None)
def sigma_levels(max_error: float = MAX_RENDER_ERROR, sigma_max: float = SIGMA_MAX) -> tuple[float, ...]:
    """σ grid from 0 to ``sigma_max``: each next level is as far as the interpolation error allows."""

    def within(lo: float, hi: float) -> bool:
        return max(_interpolation_error(lo, hi, s) for s in np.linspace(lo, hi, 18)[1:-1]) <= max_error

    levels = [0.0]
    while levels[-1] < sigma_max:
        lo = levels[-1]
        if within(lo, sigma_max):
            levels.append(sigma_max)
            break
        a, b = lo, sigma_max
        for _ in range(20):
            mid = 0.5 * (a + b)
            a, b = (mid, b) if within(lo, mid) else (a, mid)
        levels.append(round(a, 4))
    return tuple(levels)


@functools.lru_cache(maxsize=None)
def layering_error(shape: str, max_error: float = MAX_RENDER_ERROR) -> float:
    """‖two-level mixture − exact kernel‖₁ of ``shape``, at its worst over σ on the grid of
    ``max_error``: the bound of the render against a per-pixel scatter with that PSF (about
    ``max_error`` for the Gaussian, which places the grid; a pillbox changes shape between two
    levels, so the disc and the mixture carry more)."""
    levels = sigma_levels(max_error)
    return max(_interpolation_error(lo, hi, float(s), shape)
               for lo, hi in zip(levels[:-1], levels[1:]) for s in np.linspace(lo, hi, 5)[1:-1])


@functools.lru_cache(maxsize=12)
def _kernel_spectra(shapes: tuple[str, ...], levels: tuple[float, ...], fft_h: int, fft_w: int, device: str) -> torch.Tensor:
    """rFFT of each shape's kernel at each level, centred at (0, 0) on an fft_h×fft_w circle:
    [len(shapes), L, fft_h, fft_w//2+1]."""
    planes = np.zeros((len(shapes), len(levels), fft_h, fft_w), dtype=np.float64)
    for j, shape in enumerate(shapes):
        for i, sigma in enumerate(levels):
            k = psf_kernel(shape, sigma)
            r = k.shape[0] // 2
            ys = np.arange(-r, r + 1) % fft_h
            xs = np.arange(-r, r + 1) % fft_w
            np.add.at(planes[j, i], (ys[:, None], xs[None, :]), k)
    return torch.fft.rfft2(torch.from_numpy(planes)).to(torch.complex64).to(device)


def _gaussian_spectrum(sigmas: torch.Tensor, fft_h: int, fft_w: int) -> torch.Tensor:
    """Per-sample rFFT of OpenCV-style Gaussian kernels (σ ≤ 0 → identity): [B, fft_h, fft_w//2+1],
    all samples at once on their device (the canvas is wider than any such kernel)."""
    s = sigmas.to(torch.float64)[:, None]
    radius = (torch.round(s * 8 + 1).long() | 1) // 2  # gaussian_radius, per sample

    def taps(n: int) -> torch.Tensor:
        i = torch.arange(n, device=s.device)
        x = torch.minimum(i, n - i).to(torch.float64)  # distance from tap 0 around the circle
        t = torch.exp(-(x * x) / (2.0 * s.clamp(min=1e-6) ** 2)) * (x <= radius)
        return t / t.sum(dim=1, keepdim=True)

    return (torch.fft.fft(taps(fft_h))[:, :, None] * torch.fft.rfft(taps(fft_w))[:, None, :]).to(torch.complex64)


def camera_blur(image: torch.Tensor, camera_sigma: torch.Tensor) -> torch.Tensor:
    """A uniform Gaussian blur of each [B,C,H,W] image by its σ in ``camera_sigma`` [B] px, the
    kernel ``render_defocus`` applies for the camera, on its own (reflect-padded borders)."""
    h, w = image.shape[-2:]
    pad_h, pad_w = (min(gaussian_radius(float(camera_sigma.max())), n - 1) for n in (h, w))
    padded = F.pad(image, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    fh, fw = padded.shape[-2:]
    spectrum = torch.fft.rfft2(padded) * _gaussian_spectrum(camera_sigma.to(image.device), fh, fw)[:, None]
    return torch.fft.irfft2(spectrum, s=(fh, fw))[:, :, pad_h : pad_h + h, pad_w : pad_w + w].contiguous()


def render_defocus(
    sharp: torch.Tensor,
    sigma: torch.Tensor,
    psf: str | list[str] = "gaussian",
    camera_sigma: torch.Tensor | None = None,
    max_error: float = MAX_RENDER_ERROR,
    sigma_max: float = SIGMA_MAX,
) -> torch.Tensor:
    """Blur ``sharp`` [B,3,H,W] (0..1) with the per-pixel σ map ``sigma`` [B,1,H,W] (px) by scatter.

    ``psf`` is one shape for the batch or one per sample. ``camera_sigma`` [B] adds a uniform
    Gaussian blur after the scatter (the camera's own blur; its σ adds in quadrature to σ).
    ``max_error`` bounds the layering error of the Gaussian PSF (fewer levels, faster, when larger).
    σ is clipped to ``sigma_max``: beyond the network's range for evaluation sets and for recipes whose
    labels reach past it (maps.LABEL_SIGMA_MAX).
    """
    if sharp.dim() != 4 or sigma.dim() != 4 or sigma.shape[1] != 1 or sigma.shape[-2:] != sharp.shape[-2:]:
        raise ValueError(f"expected sharp [B,C,H,W] and sigma [B,1,H,W], got {tuple(sharp.shape)} and {tuple(sigma.shape)}")
    b, c, h, w = sharp.shape
    shapes = [psf] * b if isinstance(psf, str) else list(psf)
    if len(shapes) != b or any(s not in PSF_SHAPES for s in shapes):
        raise ValueError(f"psf must be one of {PSF_SHAPES} or a list of {b} of them, got {psf!r}")
    levels = sigma_levels(float(max_error), float(sigma_max))
    level_var = torch.tensor([s * s for s in levels], dtype=torch.float32, device=sharp.device)

    var = sigma.to(sharp.dtype).clamp(0.0, levels[-1]).square()
    idx = (torch.searchsorted(level_var, var.contiguous(), right=True) - 1).clamp(0, len(levels) - 2)
    frac = ((var - level_var[idx]) / (level_var[idx + 1] - level_var[idx])).clamp(0.0, 1.0)
    # Fractional level position: a pixel at i + f gives weight 1 − f to level i and f to level i + 1.
    position = idx.to(sharp.dtype) + frac
    # Which sample needs which level (its own pixels at i feed levels i and i + 1): a level's FFT
    # runs only over the samples that use it, which saves most with small-σ maps.
    present = torch.zeros(b, len(levels), dtype=torch.bool, device=sharp.device)
    present.scatter_(1, idx.flatten(1), True)
    needed = present.clone()
    needed[:, 1:] |= present[:, :-1]

    # Reflect padding as wide as the widest kernel of the grid (capped by what reflect allows); one
    # canvas size per image size keeps the cached kernel spectra few.
    widest = max(psf_kernel(s, levels[-1]).shape[0] // 2 for s in PSF_SHAPES)
    pad_h, pad_w = min(widest, h - 1), min(widest, w - 1)
    padded = F.pad(torch.cat([sharp, position], dim=1), (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    src, position = padded[:, :c], padded[:, c:]
    fh, fw = src.shape[-2:]

    names = sorted(set(shapes))
    bank = _kernel_spectra(tuple(names), levels, fh, fw, str(sharp.device))
    shape_of = torch.tensor([names.index(s) for s in shapes], device=sharp.device)

    acc = torch.zeros(b, c, fh, fw // 2 + 1, dtype=torch.complex64, device=sharp.device)
    for k in needed.any(dim=0).nonzero().flatten().tolist():
        users = needed[:, k].nonzero().flatten()
        every = users.numel() == b
        pos, img = (position, src) if every else (position[users], src[users])
        layer = torch.fft.rfft2(img * torch.relu(1.0 - (pos - k).abs()))
        kernel = bank[0, k] if len(names) == 1 else bank[shape_of[users], k][:, None]
        if every:
            acc.addcmul_(layer, kernel)
        else:
            acc.index_add_(0, users, layer * kernel)
    if camera_sigma is not None:
        acc *= _gaussian_spectrum(camera_sigma.to(sharp.device), fh, fw)[:, None]
    out = torch.fft.irfft2(acc, s=(fh, fw))
    return out[:, :, pad_h : pad_h + h, pad_w : pad_w + w].contiguous()
