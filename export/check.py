"""Compare two models output by output, as Polygraphy's ``compare`` does: per-pixel error in σ px
over a set of inputs, summarised as mean, median, max and percentiles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hdme.conventions import output_to_sigma
from hdme.errors import HdmeError

ERROR_STATS = ("mean", "median", "p90", "p99", "max")


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


def open_model(model: str | os.PathLike) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """A model argument → (label, infer) with infer(float32 [B,3,H,W]) → σ/10 [B,1,H,W]."""
    from hdme.runtime.backends import create_backend

    backend = create_backend(str(model), backend="auto")
    return f"{Path(str(model)).name} ({backend.name})", backend.infer


def comparison_inputs(images: str | os.PathLike | None, size: tuple[int, int], count: int, seed: int = 0) -> Iterable[np.ndarray]:
    """Inputs [1,3,H,W]: the images of a folder fitted to ``size``, or seeded uniform noise."""
    from hdme.export.calibration import CalibrationSet

    if images is None:
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield rng.random((1, 3, *size), dtype=np.float32)
        return
    folder = CalibrationSet(images, size=size, count=count)
    for i in range(len(folder)):
        yield folder.load(i)[None]


def compare_models(
    model_a: str | os.PathLike,
    model_b: str | os.PathLike,
    images: str | os.PathLike | None = None,
    size: tuple[int, int] = (256, 256),
    count: int = 8,
) -> dict:
    """Error statistics of B against A over all pixels of all inputs."""
    label_a, infer_a = open_model(model_a)
    label_b, infer_b = open_model(model_b)
    outs_a, outs_b = [], []
    for x in comparison_inputs(images, size, count):
        outs_a.append(infer_a(x))
        outs_b.append(infer_b(x))
    stats = error_stats(np.concatenate(outs_a), np.concatenate(outs_b))
    return {"a": label_a, "b": label_b, "inputs": len(outs_a), "size": f"{size[0]}x{size[1]}", **stats}
