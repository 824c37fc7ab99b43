"""Accuracy of exported models against their FP32 source on held-out data, through ONNX Runtime.

The held-out set is synthetic (COCO_shuffle recipe, a fixed seed no calibration or training run
uses) when torch and the synthesis stage are installed; otherwise a folder of images with σ maps
(``--eval DIR``, the layout ``hdme.datasets`` reads, e.g. the test split of ``hdme data make``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdme.conventions import output_to_sigma, rgb_to_input
from hdme.errors import HdmeError
from hdme.metrics import map_metrics

HELDOUT_SEED = 905_577  # distinct from the seeds of training, validation and calib_data/
HELDOUT_SIZE = 256
HELDOUT_COUNT = 16


@dataclass
class HeldOut:
    images: list[np.ndarray]  # float32 [3, H, W] RGB 0..1
    sigmas: list[np.ndarray]  # float32 [H, W] px
    source: str


def synthetic_heldout(count: int, size: int, seed: int = HELDOUT_SEED) -> HeldOut:
    try:
        from hdme.train.synth import SyntheticStream, get_recipe
    except ImportError as exc:
        raise HdmeError(
            f"held-out synthetic data needs the training stage ({exc}); install hdme[train] "
            "or pass --eval DIR with images and σ maps"
        ) from None
    batch = min(count, 8)
    stream = SyntheticStream(get_recipe("hdme"), size, batch, seed)
    images, sigmas = [], []
    while len(images) < count:
        image, sigma = stream.next_batch()
        images.extend(image.numpy().astype(np.float32))
        sigmas.extend(sigma[:, 0].numpy().astype(np.float32))
    return HeldOut(images[:count], sigmas[:count], f"synthetic 'hdme' recipe, {count}×{size}², seed {seed}")


def folder_heldout(folder: str | os.PathLike, count: int | None = None) -> HeldOut:
    from hdme.datasets import load_dataset

    samples = [s for s in load_dataset(str(folder), limit=count) if s.sigma is not None]
    if not samples:
        raise HdmeError(f"{folder}: no images with σ maps to evaluate on")
    for s in samples:
        if s.sigma.shape != s.image.shape[:2]:
            raise HdmeError(f"{folder}: σ map of {s.name} is {s.sigma.shape}, its image {s.image.shape[:2]}")
    return HeldOut(
        [rgb_to_input(s.image)[0] for s in samples],
        [s.sigma.astype(np.float32) for s in samples],
        f"folder {folder}, {len(samples)} images",
    )


def heldout_set(eval_dir: str | os.PathLike | None = None, count: int = HELDOUT_COUNT, size: int = HELDOUT_SIZE) -> HeldOut:
    if eval_dir is not None:
        return folder_heldout(eval_dir, count)
    return synthetic_heldout(count, size)


def predict(path: str | os.PathLike, heldout: HeldOut) -> list[np.ndarray]:
    """Network outputs (σ/10, [1, H, W]) of an ONNX file for every held-out image."""
    from hdme.export.onnx import ort_session, run_onnx

    session = ort_session(path)
    return [run_onnx(session, image[None])[0] for image in heldout.images]


def accuracy_table(reference: str | os.PathLike, candidates: dict[str, str | os.PathLike], heldout: HeldOut) -> list[dict]:
    """One row for the FP32 reference and one per candidate: MAE (σ/10) and δ1 against the truth,
    the MAE increase over the reference, mean and max per-pixel difference from it in σ px."""
    from hdme.metrics import error_stats

    ref_out = predict(reference, heldout)
    rows = []
    for label, path in {"fp32": reference, **candidates}.items():
        outs = ref_out if path == reference else predict(path, heldout)
        per_image = [map_metrics(output_to_sigma(o[0]), gt) for o, gt in zip(outs, heldout.sigmas)]
        diff = error_stats(np.concatenate([o.ravel() for o in outs]), np.concatenate([o.ravel() for o in ref_out]))
        rows.append(
            {
                "model": label,
                "file": Path(path).name,
                "mae": float(np.mean([m["mae"] for m in per_image])),
                "d1": float(np.nanmean([m["d1"] for m in per_image])),
                "mean_diff_px": diff["mean"],
                "max_diff_px": diff["max"],
            }
        )
    for row in rows:
        row["mae_increase"] = row["mae"] - rows[0]["mae"]
    return rows


def print_accuracy_table(rows: list[dict], heldout: HeldOut) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"accuracy against FP32 on held-out data ({heldout.source})")
    for col in ("model", "MAE σ/10", "ΔMAE", "δ1", "mean |Δ| px", "max |Δ| px"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"], f"{r['mae']:.5f}", f"{r['mae_increase']:+.5f}", f"{r['d1']:.4f}",
            f"{r['mean_diff_px']:.4f}", f"{r['max_diff_px']:.3f}",
        )
    Console().print(table)
