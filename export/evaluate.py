"""Accuracy of exported models against their FP32 source, through the evaluation harness
(hdme.evaluation) with ONNX Runtime and one pass: the numbers ``hdme bench accuracy --backend
onnxruntime --tta none`` prints for the same set and file.

The held-out set is any ``--dataset`` spec of the harness: by default the first 16 images of the
synthetic held-out split (rendered by the training stage, so it needs torch), or a folder of images
with σ maps (e.g. the test split of ``hdme data make``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hdme.console import make_console
from hdme.errors import HdmeError
from hdme.evaluation import BIN_TABLE_HEADERS, EvalSet, bin_table_rows, evaluate, load_eval_set, parse_synthetic, split_limit

DEFAULT_HELDOUT = "synthetic:16"


def with_count(spec: str, count: int) -> str:
    """``spec`` limited to ``count`` images unless it sets its own ``:N``."""
    head, sep, options = spec.partition(",") if parse_synthetic(spec) is not None else (spec, "", "")
    name, limit = split_limit(head)
    return f"{name}:{limit or count}{sep}{options}"


def heldout_set(spec: str = DEFAULT_HELDOUT) -> EvalSet:
    """The held-out set of a spec; it must carry σ maps."""
    eval_set = load_eval_set(spec)
    if eval_set.protocol == "mask":
        raise HdmeError(f"{spec}: holds in-focus masks, not σ maps; the accuracy check needs σ maps")
    return eval_set


def describe(eval_set: EvalSet) -> str:
    return f"{eval_set.name}, {len(eval_set.samples)} images" + (f" ({eval_set.note})" if eval_set.note else "")


def accuracy_table(reference: str | os.PathLike, candidates: dict[str, str | os.PathLike], eval_set: EvalSet) -> list[dict]:
    """One row for the FP32 reference and one per candidate: MAE (σ/10), δ1 and the σ bins against
    the truth, the MAE increase over the reference, mean and max per-pixel difference from it in σ px."""
    from hdme.runtime.predict import DefocusPredictor

    rows, reference_maps = [], None
    for label, path in {"fp32": reference, **candidates}.items():
        predictor = DefocusPredictor(path, backend="onnxruntime", tta="none")
        maps: list[np.ndarray] = []
        try:
            result = evaluate(predictor, eval_set, on_prediction=lambda i, sample, sigma: maps.append(sigma))
        finally:
            predictor.close()
        if reference_maps is None:
            reference_maps = maps
        diff = np.abs(np.concatenate([m.ravel() for m in maps]).astype(np.float64) - np.concatenate([m.ravel() for m in reference_maps]))
        rows.append({
            "model": label,
            "file": Path(path).name,
            "mae": result["mean"]["mae"],
            "d1": result["mean"]["d1"],
            "mean_diff_px": float(diff.mean()),
            "max_diff_px": float(diff.max()),
            "sigma_bins": result["sigma_bins"],
        })
    for row in rows:
        row["mae_increase"] = row["mae"] - rows[0]["mae"]
    return rows


def print_accuracy_table(rows: list[dict], eval_set: EvalSet) -> None:
    from rich.table import Table

    console = make_console()
    table = Table(title=f"accuracy against FP32 on held-out data ({describe(eval_set)})")
    for col in ("model", "MAE σ/10", "ΔMAE", "δ1", "mean |Δ| px", "max |Δ| px"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"], f"{r['mae']:.5f}", f"{r['mae_increase']:+.5f}", f"{r['d1']:.4f}",
            f"{r['mean_diff_px']:.4f}", f"{r['max_diff_px']:.3f}",
        )
    console.print(table)
    bins = Table(title="by true σ")
    for i, col in enumerate(("model", *BIN_TABLE_HEADERS)):
        bins.add_column(col, justify="left" if i < 2 else "right")
    for r in rows:
        for cells in bin_table_rows(r["sigma_bins"]):
            bins.add_row(r["model"], *cells)
    console.print(bins)
