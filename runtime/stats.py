"""Latency statistics shared by the streaming summary and the latency benchmark."""

from __future__ import annotations

import numpy as np

UNSTABLE_CV = 0.10  # coefficient of variation above which a measurement is flagged, as trtexec does
STAT_KEYS = ("mean", "median", "p90", "p95", "p99", "std", "min", "max", "cv")


def latency_stats(samples_ms) -> dict[str, float]:
    """mean, median, p90/p95/p99, std, min, max (ms) and the coefficient of variation."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        return {k: float("nan") for k in STAT_KEYS}
    mean = float(a.mean())
    p90, p95, p99 = (float(v) for v in np.percentile(a, [90, 95, 99]))
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "mean": mean, "median": float(np.median(a)), "p90": p90, "p95": p95, "p99": p99,
        "std": std, "min": float(a.min()), "max": float(a.max()), "cv": std / mean if mean > 0 else 0.0,
    }


def is_unstable(stats: dict[str, float], threshold: float = UNSTABLE_CV) -> bool:
    return bool(stats["cv"] > threshold)
