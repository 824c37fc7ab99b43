"""Compare two models output by output, as Polygraphy's ``compare`` does: per-pixel error in σ px
over a set of inputs, summarised as mean, median, max and percentiles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hdme.contract import artifact_kind, model_precision
from hdme.conventions import rgb_to_input
from hdme.errors import HdmeError
from hdme.images import fit_to_size, list_images, read_image
from hdme.metrics import error_stats
from hdme.runtime.backends import ENGINES, create_backend


def open_model(model: str | os.PathLike) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """A model argument → (label, infer) with infer(float32 [B,3,H,W]) → σ/10 [B,1,H,W].

    A comparison is of files, not of engines' defaults: a file runs on the first engine of the
    registry that runs its kind, an FP32 one at fp32 (not at an engine's faster default)."""
    kind = artifact_kind(model)
    engine = next((e.name for e in ENGINES if kind.name in e.runs), "auto") if kind else "auto"
    own = model_precision(model) if kind and Path(model).is_file() else "fp32"
    backend = create_backend(str(model), engine, "fp32" if own == "fp32" else None)
    return f"{Path(str(model)).name} ({backend.name})", backend.infer


def comparison_inputs(images: str | os.PathLike | None, size: tuple[int, int], count: int, seed: int = 0) -> Iterable[np.ndarray]:
    """Inputs [1,3,H,W]: the images of a folder fitted to ``size``, or seeded uniform noise."""
    if images is None:
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield rng.random((1, 3, *size), dtype=np.float32)
        return
    paths = list_images(images)[:count]
    if not paths:
        raise HdmeError(f"{images}: no images to compare the models on")
    for path in paths:
        yield rgb_to_input(fit_to_size(read_image(path), size))


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
