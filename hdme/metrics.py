"""Metrics used everywhere (training validation, export parity, benchmarks). numpy only.

Units: ``mse``/``mae`` are on σ/10 (the network's output scale), ``rmse`` is in px. The
ratio metrics (AbsRel, SqRel, RMSElog, δ thresholds) are only defined where the truth is
clearly non-zero, so they are computed on pixels with true σ ≥ ``RATIO_MIN_SIGMA`` px.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from hdme.conventions import SIGMA_BIN_EDGES, SIGMA_SCALE, output_to_sigma
from hdme.errors import HdmeError

RATIO_MIN_SIGMA = 0.5  # px
RTF_SIGMA_MAX = 3.275  # px; the RTF (DMENet) protocol clips and normalises by this
F_BETA2 = 0.3
MAP_METRICS = ("mse", "mae", "rmse", "abs_rel", "sq_rel", "rmse_log", "d1", "d2", "d3")
ERROR_STATS = ("mean", "median", "p90", "p99", "max")


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and truth {gt.shape} differ in shape")
    return pred, gt


def map_metrics(pred_sigma: np.ndarray, gt_sigma: np.ndarray) -> dict[str, float]:
    """Defocus-map metrics of a σ prediction (px) against the truth (px)."""
    pred, gt = _pair(pred_sigma, gt_sigma)
    err = pred - gt
    out = {
        "mse": float(np.mean((err / SIGMA_SCALE) ** 2)),
        "mae": float(np.mean(np.abs(err) / SIGMA_SCALE)),
        "rmse": float(np.sqrt(np.mean(err**2))),
    }
    sel = gt >= RATIO_MIN_SIGMA
    if not sel.any():
        out.update({k: float("nan") for k in ("abs_rel", "sq_rel", "rmse_log", "d1", "d2", "d3")})
        return out
    p = np.maximum(pred[sel], 1e-3)
    g = gt[sel]
    ratio = np.maximum(p / g, g / p)
    out.update(
        abs_rel=float(np.mean(np.abs(p - g) / g)),
        sq_rel=float(np.mean((p - g) ** 2 / g)),
        rmse_log=float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))),
        d1=float(np.mean(ratio < 1.25)),
        d2=float(np.mean(ratio < 1.25**2)),
        d3=float(np.mean(ratio < 1.25**3)),
    )
    return out


def rtf_metrics(pred_sigma: np.ndarray, gt_sigma: np.ndarray) -> dict[str, float]:
    """The DMENet protocol for RTF: crop to the common top-left region, clip both maps to
    [0, 3.275] px, divide by 3.275, then MSE and MAE over the image."""
    pred = np.asarray(pred_sigma, dtype=np.float64)
    gt = np.asarray(gt_sigma, dtype=np.float64)
    h, w = min(pred.shape[0], gt.shape[0]), min(pred.shape[1], gt.shape[1])
    p = np.clip(pred[:h, :w], 0.0, RTF_SIGMA_MAX) / RTF_SIGMA_MAX
    g = np.clip(gt[:h, :w], 0.0, RTF_SIGMA_MAX) / RTF_SIGMA_MAX
    return {"mse": float(np.mean((p - g) ** 2)), "mae": float(np.mean(np.abs(p - g)))}


def focus_score(pred_sigma: np.ndarray) -> np.ndarray:
    """Per-image normalised in-focus score in [0, 1] (1 = sharpest pixel of the image)."""
    s = np.asarray(pred_sigma, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-12:
        return np.ones_like(s)
    return (hi - s) / (hi - lo)


def f_measure(precision: np.ndarray, recall: np.ndarray, beta2: float = F_BETA2) -> np.ndarray:
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    denom = beta2 * precision + recall
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1.0 + beta2) * precision * recall / denom
    return np.where(denom > 0, f, 0.0)


def blur_detection_metrics(pred_sigma: np.ndarray, in_focus: np.ndarray, beta2: float = F_BETA2) -> dict[str, float]:
    """Blur-detection scores of a σ map against a binary mask (True = in focus, the positive class).

    The σ map becomes a per-image normalised in-focus score; precision/recall are taken at 255
    thresholds; ``best_f`` is the best F-measure (β² = 0.3) over them, ``mae`` the mean absolute
    difference between the score and the mask.
    """
    score = focus_score(pred_sigma)
    mask = np.asarray(in_focus).astype(bool)
    if score.shape != mask.shape:
        raise ValueError(f"prediction {score.shape} and mask {mask.shape} differ in shape")
    thresholds = np.arange(1, 256) / 255.0
    # Count positives above each threshold through a histogram: one pass instead of 255.
    bins = np.clip(np.floor(score * 255.0 + 1e-9), 0, 255).astype(np.int64)
    pos_hist = np.bincount(bins[mask], minlength=256)
    all_hist = np.bincount(bins.ravel(), minlength=256)
    tp = np.cumsum(pos_hist[::-1])[::-1][1:]  # pixels with bin >= t for t = 1..255
    predicted = np.cumsum(all_hist[::-1])[::-1][1:]
    n_pos = int(mask.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = tp / n_pos if n_pos else np.zeros_like(tp, dtype=np.float64)
    f = f_measure(precision, recall, beta2)
    best = int(np.argmax(f))
    return {
        "best_f": float(f[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "threshold": float(thresholds[best]),
        "mae": float(np.mean(np.abs(score - mask))),
    }


def mean_metrics(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Plain mean of each metric over images (NaNs ignored), as every protocol here reports."""
    rows = list(rows)
    if not rows:
        return {}
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    out = {}
    for k in keys:
        vals = np.array([r[k] for r in rows if k in r], dtype=np.float64)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def error_stats(out_a: np.ndarray, out_b: np.ndarray) -> dict[str, float]:
    """Absolute per-pixel difference in σ px between two network outputs (σ/10)."""
    if out_a.shape != out_b.shape:
        raise HdmeError(f"outputs differ in shape: {out_a.shape} vs {out_b.shape}")
    err = np.abs(output_to_sigma(out_a).astype(np.float64) - output_to_sigma(out_b))
    return {
        "mean": float(err.mean()),
        "median": float(np.median(err)),
        "p90": float(np.percentile(err, 90)),
        "p99": float(np.percentile(err, 99)),
        "max": float(err.max()),
    }


# Truth beyond the last edge of SIGMA_BIN_EDGES gets a bin of its own.
SIGMA_BIN_NAMES = tuple(f"{lo:g}-{hi:g}" for lo, hi in zip(SIGMA_BIN_EDGES, SIGMA_BIN_EDGES[1:])) + (f">{SIGMA_BIN_EDGES[-1]:g}",)


class SigmaBins:
    """Per-pixel sums over images in bins of the true σ: mean predicted against mean true σ, MAE,
    the bin's share of the pixels and of the total absolute error.

    Bins are [0, 1), [1, 3), [3, 5), [5, 7), [7, 10] px and (10, ∞); pixels of all images count
    alike (unlike the per-image means of ``map_metrics``)."""

    def __init__(self) -> None:
        n = len(SIGMA_BIN_NAMES)
        self.count = np.zeros(n, np.int64)
        self.true_sum, self.pred_sum, self.abs_sum = np.zeros(n), np.zeros(n), np.zeros(n)

    def add(self, pred_sigma: np.ndarray, gt_sigma: np.ndarray) -> None:
        """Accumulate one image over the region both maps share (the top-left, as ``rtf_metrics``)."""
        h, w = min(pred_sigma.shape[0], gt_sigma.shape[0]), min(pred_sigma.shape[1], gt_sigma.shape[1])
        t = np.asarray(gt_sigma[:h, :w], dtype=np.float64).ravel()
        p = np.asarray(pred_sigma[:h, :w], dtype=np.float64).ravel()
        idx = np.where(t > SIGMA_BIN_EDGES[-1], len(SIGMA_BIN_NAMES) - 1,
                       np.searchsorted(SIGMA_BIN_EDGES[1:-1], t, side="right"))
        n = len(SIGMA_BIN_NAMES)
        self.count += np.bincount(idx, minlength=n)
        self.true_sum += np.bincount(idx, t, minlength=n)
        self.pred_sum += np.bincount(idx, p, minlength=n)
        self.abs_sum += np.bincount(idx, np.abs(p - t), minlength=n)

    def rows(self) -> list[dict]:
        """One dict per bin (the last only when some truth lies beyond 10 px): ``bin``, ``share``
        of the pixels, ``true`` and ``pred`` mean σ px, ``mae`` (σ/10) and ``error_share`` of the
        absolute error; None where a bin has no pixels."""
        total, total_abs = max(int(self.count.sum()), 1), max(float(self.abs_sum.sum()), 1e-12)
        out = []
        for i, name in enumerate(SIGMA_BIN_NAMES):
            n = int(self.count[i])
            if i == len(SIGMA_BIN_NAMES) - 1 and n == 0:
                break
            out.append({
                "bin": name,
                "share": n / total,
                "true": float(self.true_sum[i] / n) if n else None,
                "pred": float(self.pred_sum[i] / n) if n else None,
                "mae": float(self.abs_sum[i] / n / SIGMA_SCALE) if n else None,
                "error_share": float(self.abs_sum[i] / total_abs),
            })
        return out
