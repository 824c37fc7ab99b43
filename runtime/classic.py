"""The classic baseline: defocus from the gradient ratio at edges (Zhuo & Sim, Pattern Recognition
44(9), 2011), two re-blur scales, propagated to every pixel with an edge-aware filter.

No weights and no torch: it is also the fallback when no model is installed.

Edge model. A step edge of height A blurred by a Gaussian of σ has, after re-blurring with σk,
the gradient peak A / √(2π(σ² + σk²)). The ratio of the peaks at σ1 < σ2 is therefore

    R = √((σ² + σ2²) / (σ² + σ1²)),   1 < R ≤ σ2/σ1,

so σ = √((σ2² − R²σ1²) / (R² − 1)) (the same as √((R²σ1² − σ2²)/(1 − R²))). Gradients are taken with
central differences, which equal the derivative of a box of width 2 along each axis; for an edge
whose normal makes the angle θ with the x axis that box adds the variance
(cos⁴θ + sin⁴θ)/3 to both re-blur scales, and the estimate accounts for it. The peak height is read
from a parabola through the log-gradient at the edge pixel and its two neighbours across the edge
(exact for a Gaussian profile), so an edge between two pixels is not under-estimated.

Pipeline: Canny edges of the σ1-blurred grey image → σ at edge pixels → a joint bilateral filter over
the edge pixels (image-guided, removes outliers) → normalised convolution with a domain-transform
recursive filter (Gastal & Oliveira 2011) guided by the image, which spreads the edge values over
regions of similar colour and stops at strong edges; the paper used the matting Laplacian here, which
is far slower.
"""

from __future__ import annotations

import cv2
import numpy as np

from hdme.conventions import SIGMA_MAX, rescale_sigma
from hdme.errors import HdmeError

# Variance that a central difference adds along an axis (the derivative of a box of width 2).
CENTRAL_DIFFERENCE_VARIANCE = 1.0 / 3.0


def sigma_from_ratio(ratio: np.ndarray, sigma1: float, sigma2: float, extra_variance: np.ndarray | float = 0.0) -> np.ndarray:
    """Edge σ (px) from the gradient-peak ratio R = |∇(I*G_σ1)| / |∇(I*G_σ2)|, clipped to [0, SIGMA_MAX];
    NaN where R ≤ 1, which no isolated edge produces (a neighbouring edge interfered).

    ``extra_variance`` is what the gradient operator adds to both re-blur variances."""
    r2 = np.asarray(ratio, dtype=np.float64) ** 2
    v1 = sigma1**2 + np.asarray(extra_variance, dtype=np.float64)
    v2 = sigma2**2 + np.asarray(extra_variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (v2 - r2 * v1) / (r2 - 1.0)
    sigma = np.sqrt(np.clip(var, 0.0, SIGMA_MAX**2))
    return np.where(r2 > 1.0, sigma, np.nan).astype(np.float32)


def _central_gradients(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=1, borderType=cv2.BORDER_REFLECT) * 0.5
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=1, borderType=cv2.BORDER_REFLECT) * 0.5
    return gx, gy


def _peak_across_edge(magnitude: np.ndarray, rows: np.ndarray, cols: np.ndarray, along_x: np.ndarray) -> np.ndarray:
    """Gradient-peak height at each edge pixel, searched one pixel either side across the edge and
    refined by a parabola through the log-magnitude."""
    h, w = magnitude.shape
    dr = np.where(along_x, 0, 1)
    dc = np.where(along_x, 1, 0)
    log_m = np.log(np.maximum(magnitude, 1e-12))

    def sample(offset: np.ndarray | int) -> np.ndarray:
        return log_m[np.clip(rows + offset * dr, 0, h - 1), np.clip(cols + offset * dc, 0, w - 1)]

    centre = sample(0)
    before, after = sample(-1), sample(1)
    # Canny's maximum sits on its own smoothing scale; step once towards the larger neighbour.
    shift = np.where((after > centre) & (after >= before), 1, np.where(before > centre, -1, 0))
    left, mid, right = sample(shift - 1), sample(shift), sample(shift + 1)
    curvature = left - 2.0 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        refined = mid - (right - left) ** 2 / (8.0 * curvature)
    peak = np.where(curvature < -1e-9, refined, mid)
    return np.exp(np.minimum(peak, mid + np.log(2.0)))


def _domain_transform_pass(data: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """One left-to-right then right-to-left recursive pass along axis 1 (in place on a copy).

    ``decay[:, j]`` is the feedback weight between columns j-1 and j."""
    out = data.copy()
    w = out.shape[1]
    for j in range(1, w):
        out[:, j] += decay[:, j, None] * (out[:, j - 1] - out[:, j])
    for j in range(w - 2, -1, -1):
        out[:, j] += decay[:, j + 1, None] * (out[:, j + 1] - out[:, j])
    return out


def domain_transform_fill(
    values: np.ndarray,
    weights: np.ndarray,
    guide: np.ndarray,
    sigma_s: float,
    sigma_r: float,
    iterations: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Edge-aware normalised convolution of sparse ``values`` (with confidence ``weights``) guided by
    ``guide`` (H×W×C float in [0, 1]), by the recursive domain-transform filter.

    Returns the filled map and the filtered confidence (≈ how much data reached each pixel)."""
    guide = guide.astype(np.float32)
    if guide.ndim == 2:
        guide = guide[..., None]
    # Domain-transform derivative between neighbours: 1 + σs/σr · Σ|ΔI|.
    dx = np.zeros(guide.shape[:2], np.float32)
    dx[:, 1:] = np.abs(np.diff(guide, axis=1)).sum(axis=2)
    dy = np.zeros(guide.shape[:2], np.float32)
    dy[1:, :] = np.abs(np.diff(guide, axis=0)).sum(axis=2)
    dx = 1.0 + (sigma_s / sigma_r) * dx
    dy = 1.0 + (sigma_s / sigma_r) * dy
    stack = np.stack([values * weights, weights], axis=-1).astype(np.float32)
    for i in range(iterations):
        # Per-iteration σ of the recursive filter, so that the iterations sum to σs (Gastal & Oliveira).
        sigma_i = sigma_s * np.sqrt(3.0) * 2.0 ** (iterations - i - 1) / np.sqrt(4.0**iterations - 1.0)
        a = np.float32(np.exp(-np.sqrt(2.0) / sigma_i))
        stack = _domain_transform_pass(stack, np.power(a, dx))
        stack = np.swapaxes(_domain_transform_pass(np.swapaxes(stack, 0, 1), np.power(a, dy).T), 0, 1)
    num, den = stack[..., 0], stack[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        filled = np.where(den > 1e-8, num / np.maximum(den, 1e-8), 0.0)
    return filled.astype(np.float32), den


def joint_bilateral_at_points(
    values: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    guide: np.ndarray,
    radius: int,
    sigma_s: float,
    sigma_r: float,
) -> np.ndarray:
    """Joint bilateral filter of a sparse map, evaluated at its own points over its own points:
    each value becomes the weighted mean of the sparse values within ``radius``, weighted by
    distance and by colour similarity in ``guide``."""
    h, w = guide.shape[:2]
    sparse = np.zeros((h, w), np.float32)
    present = np.zeros((h, w), bool)
    sparse[rows, cols] = values
    present[rows, cols] = True
    centre_colour = guide[rows, cols]
    num = np.zeros(len(rows), np.float64)
    den = np.zeros(len(rows), np.float64)
    for oy in range(-radius, radius + 1):
        for ox in range(-radius, radius + 1):
            d2 = oy * oy + ox * ox
            if d2 > radius * radius:
                continue
            r = rows + oy
            c = cols + ox
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            r = np.clip(r, 0, h - 1)
            c = np.clip(c, 0, w - 1)
            colour_d2 = np.sum((guide[r, c] - centre_colour) ** 2, axis=-1)
            wgt = inside * present[r, c] * np.exp(-d2 / (2.0 * sigma_s**2) - colour_d2 / (2.0 * sigma_r**2))
            num += wgt * sparse[r, c]
            den += wgt
    return (num / np.maximum(den, 1e-12)).astype(np.float32)


class ZhuoSimPredictor:
    """Zhuo & Sim (2011) defocus map: ``predict(rgb_uint8) -> float32 σ px`` of the input's H×W."""

    name = "zhuo-sim"

    def __init__(
        self,
        sigma1: float = 1.0,
        sigma2: float = 2.0,
        edge_percentile: float = 80.0,
        min_edge_contrast: float = 0.02,
        bilateral_radius: int = 5,
        bilateral_sigma_s: float = 3.0,
        bilateral_sigma_r: float = 0.1,
        fill_sigma_s: float = 60.0,
        fill_sigma_r: float = 0.4,
        fill_iterations: int = 3,
        max_side: int | None = None,
    ):
        if not 0.0 < sigma1 < sigma2:
            raise HdmeError(f"zhuo-sim needs 0 < sigma1 < sigma2, got {sigma1} and {sigma2}")
        self.sigma1 = float(sigma1)
        self.sigma2 = float(sigma2)
        self.edge_percentile = float(edge_percentile)
        self.min_edge_contrast = float(min_edge_contrast)
        self.bilateral_radius = int(bilateral_radius)
        self.bilateral_sigma_s = float(bilateral_sigma_s)
        self.bilateral_sigma_r = float(bilateral_sigma_r)
        self.fill_sigma_s = float(fill_sigma_s)
        self.fill_sigma_r = float(fill_sigma_r)
        self.fill_iterations = int(fill_iterations)
        self.max_side = max_side

    def edge_sigma(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """σ at Canny edge pixels whose ratio is measurable: (rows, cols, σ px), before any filtering."""
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        blur1 = cv2.GaussianBlur(grey, (0, 0), self.sigma1, borderType=cv2.BORDER_REFLECT)
        blur2 = cv2.GaussianBlur(grey, (0, 0), self.sigma2, borderType=cv2.BORDER_REFLECT)
        gx1, gy1 = _central_gradients(blur1)
        gx2, gy2 = _central_gradients(blur2)
        mag1 = np.sqrt(gx1 * gx1 + gy1 * gy1)
        mag2 = np.sqrt(gx2 * gx2 + gy2 * gy2)

        # Canny on the σ1-blurred image, thresholds relative to its gradient statistics (as MATLAB's
        # default does) but never below a contrast that sensor noise reaches.
        high = max(float(np.percentile(mag1, self.edge_percentile)), self.min_edge_contrast)
        sobel_gain = 8.0 * 255.0  # cv2.Canny's 3×3 Sobel on 8-bit data vs a central difference on [0, 1]
        edges = cv2.Canny(
            np.clip(blur1 * 255.0 + 0.5, 0, 255).astype(np.uint8),
            0.4 * high * sobel_gain,
            high * sobel_gain,
            apertureSize=3,
            L2gradient=True,
        )
        rows, cols = np.nonzero(edges)
        keep = (rows > 1) & (rows < grey.shape[0] - 2) & (cols > 1) & (cols < grey.shape[1] - 2)
        rows, cols = rows[keep], cols[keep]
        gx, gy = gx1[rows, cols], gy1[rows, cols]
        along_x = np.abs(gx) >= np.abs(gy)
        peak1 = _peak_across_edge(mag1, rows, cols, along_x)
        peak2 = _peak_across_edge(mag2, rows, cols, along_x)
        norm2 = gx * gx + gy * gy + 1e-20
        # cos⁴θ + sin⁴θ of the edge normal: how much of each axis's box reaches the normal direction.
        directional = (gx**4 + gy**4) / norm2**2
        sigma = sigma_from_ratio(peak1 / np.maximum(peak2, 1e-12), self.sigma1, self.sigma2, CENTRAL_DIFFERENCE_VARIANCE * directional)
        valid = np.isfinite(sigma)
        return rows[valid], cols[valid], sigma[valid]

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise HdmeError(f"zhuo-sim expects an RGB uint8 H×W×3 image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        work = rgb
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            work = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        sigma = self._predict_at_size(work)
        if work.shape[:2] != (h, w):
            sigma = rescale_sigma(sigma, work.shape[:2], (h, w))
        return sigma

    def _predict_at_size(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        rows, cols, sigma = self.edge_sigma(rgb)
        if len(rows) == 0:
            # No edge: blur is unobservable anywhere; an in-focus flat image is the likelier reading.
            return np.zeros((h, w), np.float32)
        guide = rgb.astype(np.float32) / 255.0
        sigma = joint_bilateral_at_points(
            sigma, rows, cols, guide, self.bilateral_radius, self.bilateral_sigma_s, self.bilateral_sigma_r
        )
        values = np.zeros((h, w), np.float32)
        weights = np.zeros((h, w), np.float32)
        values[rows, cols] = sigma
        weights[rows, cols] = 1.0
        filled, reach = domain_transform_fill(values, weights, guide, self.fill_sigma_s, self.fill_sigma_r, self.fill_iterations)
        # Pixels no edge value reached take the image's median edge σ rather than 0.
        filled = np.where(reach > 1e-6, filled, float(np.median(sigma)))
        return np.clip(filled, 0.0, SIGMA_MAX).astype(np.float32)


def predictor_for(method: str = "auto", model: str | None = None, backend: str = "auto", max_side: int | None = None,
                  report=print, tta: str | None = None, precision: str | None = None, extend_range: bool = False):
    """A σ predictor for a method name: ``hdme`` (a model through the runtime), ``zhuo-sim``, or
    ``auto`` — the model when one is given or shipped, else this baseline (said in one line).
    ``tta``: the network's mirrored views (``DefocusPredictor``'s default when None);
    ``extend_range``: the network's estimate merged with 1/2- and 1/4-scale ones (``DefocusPredictor``)."""
    if method == "zhuo-sim":
        return ZhuoSimPredictor(max_side=max_side)
    if method not in ("auto", "hdme"):
        raise HdmeError(f"unknown method '{method}' (choose auto, hdme or zhuo-sim)")
    if method == "auto" and model is None:
        from hdme.weights import DEFAULT_MODEL, find_weights

        try:
            find_weights(DEFAULT_MODEL)
        except HdmeError:
            report("no model is installed: using the Zhuo–Sim baseline (no weights needed)")
            return ZhuoSimPredictor(max_side=max_side)
    from hdme.runtime.predict import DefocusPredictor

    return DefocusPredictor(model, backend=backend, max_side=max_side, tta=tta, precision=precision, extend_range=extend_range)
