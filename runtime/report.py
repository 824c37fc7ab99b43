"""``hdme bench report``: a Markdown report with PNG figures from accuracy (and latency) results.

Figures: mean predicted against mean true σ per bin of the true σ, per run; the map along one row of each RTF image against its
ground truth (paper Fig. 5/7 style); input / truth / prediction / error grids on a fixed σ colour
scale; latency against resolution from ``hdme bench latency --json`` output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from hdme.conventions import SIGMA_MAX, colorize
from hdme.errors import HdmeError
from hdme.io import atomic_path, make_folder, write_text
from hdme.runtime.accuracy import RESULTS_KIND, decode_image_thumb, decode_sigma_thumb, render_markdown

REAL_VMAX = 5.0  # px: the fixed colour scale for real photos, whose σ rarely exceeds it


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Reading results


def load_results(paths: Iterable[str | os.PathLike]) -> tuple[dict | None, list[dict], dict]:
    """Accuracy documents merged into one (runs appended, datasets united), latency rows, and the
    first latency document's machine description."""
    merged: dict | None = None
    latency: list[dict] = []
    latency_meta: dict = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise HdmeError(f"{path}: no such results file")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HdmeError(f"{path}: not a JSON file ({exc})") from None
        if isinstance(doc, dict) and doc.get("kind") == RESULTS_KIND:
            merged = _merge(merged, doc, path.stem)
            continue
        records = latency_records(doc)
        if not records:
            raise HdmeError(f"{path}: neither accuracy results (hdme bench accuracy --json) nor latency results (hdme bench latency --json)")
        if not latency and isinstance(doc.get("meta"), dict):
            latency_meta = doc["meta"]
        latency += records
    return merged, latency, latency_meta


def _merge(into: dict | None, doc: dict, source: str) -> dict:
    if into is None:
        return doc
    # A dataset evaluated on other images than the one of the same name already merged is another column.
    renamed = {}
    for name, info in doc["datasets"].items():
        known = into["datasets"].get(name)
        if known is not None and [i["name"] for i in known["images"]] != [i["name"] for i in info["images"]]:
            renamed[name] = f"{name} ({source})"
        into["datasets"].setdefault(renamed.get(name, name), info)
    labels = {r["label"] for r in into["runs"]}
    for run in doc["runs"]:
        run = {**run, "datasets": {renamed.get(k, k): v for k, v in run["datasets"].items()}}
        if run["label"] in labels:
            run["label"] = f"{run['label']} ({source})"
        into["runs"].append(run)
    into["skipped_datasets"].update(doc.get("skipped_datasets", {}))
    into["skipped_methods"].update(doc.get("skipped_methods", {}))
    return into


def _is_latency_row(row) -> bool:
    """A row of ``hdme bench latency --json`` carrying what the latency plot reads."""
    if not isinstance(row, dict):
        return False
    e2e = row.get("stages", {}).get("end-to-end") if isinstance(row.get("stages"), dict) else None
    return (
        all(isinstance(row.get(k), int) and row[k] > 0 for k in ("height", "width", "batch"))
        and all(isinstance(row.get(k), str) for k in ("mode", "backend", "precision", "model"))
        and isinstance(e2e, dict)
        and all(isinstance(e2e.get(k), (int, float)) for k in ("median", "p90"))
    )


def latency_records(doc) -> list[dict]:
    """The usable rows of a latency-benchmark document (others are ignored)."""
    rows = doc.get("rows") if isinstance(doc, dict) else None
    return [r for r in rows if _is_latency_row(r)] if isinstance(rows, list) else []


# ---------------------------------------------------------------------------------------------
# Figures


def plot_sigma_bins(results: dict, path: Path) -> Path | None:
    """Per set with σ maps: mean predicted against mean true σ in each bin of the true σ, one line per
    run, with the identity (a perfect model) for reference."""
    names = [n for n in results["datasets"] if any(r["datasets"].get(n, {}).get("sigma_bins") for r in results["runs"])]
    if not names:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(5.0 * len(names), 4.4), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names):
        top = 0.0
        for run in results["runs"]:
            bins = [b for b in run["datasets"].get(name, {}).get("sigma_bins", []) if b["true"] is not None]
            if not bins:
                continue
            true = [b["true"] for b in bins]
            pred = [b["pred"] for b in bins]
            ax.plot(true, pred, marker="o", ms=4, label=run["label"])
            for b in bins:
                ax.annotate(b["bin"], (b["true"], b["pred"]), fontsize=6, xytext=(3, -8), textcoords="offset points")
            top = max(top, *true, *pred)
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="predicted = true")
        ax.set_xlabel("mean true σ in the bin (px)")
        ax.set_ylabel("mean predicted σ (px)")
        ax.set_title(f"{name}: predicted against true σ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_rtf_profiles(results: dict, path: Path) -> Path | None:
    rtf = results["datasets"].get("rtf")
    if not rtf or "profiles" not in rtf or not results["runs"]:
        return None
    names = list(rtf["profiles"])
    plt = _pyplot()
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.8 * len(names)), dpi=110, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        truth = rtf["profiles"][name]
        ax.plot(truth["truth"], color="black", lw=1.6, label="ground truth")
        for run in results["runs"]:
            prof = run["datasets"].get("rtf", {}).get("profiles", {}).get(name)
            if prof:
                ax.plot(prof["pred"], lw=1.0, label=run["label"])
        ax.set_title(f"{name}, row {truth['row']}")
        ax.set_xlabel("column (px)")
        ax.set_ylabel("σ (px)")
        ax.set_ylim(0, max(4.0, float(np.max(truth["truth"])) * 1.3))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def plot_grid(results: dict, dataset: str, path: Path) -> Path | None:
    """Rows: images; columns: input, truth, then each run's prediction (and |error| for σ maps)."""
    info = results["datasets"][dataset]
    figures = info.get("figures", {})
    runs = [r for r in results["runs"] if dataset in r["datasets"]]
    if not figures or not runs:
        return None
    is_map = info["protocol"] in ("map", "rtf")
    vmax = SIGMA_MAX if info["protocol"] == "map" else REAL_VMAX
    titles = ["input", "truth σ" if is_map else "truth (white = in focus)"]
    for run in runs:
        # One part of "model · backend · precision" per line: side by side, long labels overlap.
        label = run["label"].replace(" · ", "\n")
        titles.append(label)
        if is_map:
            titles.append(f"|error|\n{label}")
    plt = _pyplot()
    ncols = len(titles)
    fig, axes = plt.subplots(len(figures), ncols, figsize=(2.4 * ncols, 2.4 * len(figures) + 0.6), dpi=110, squeeze=False)
    for row, (name, fig_data) in enumerate(figures.items()):
        tiles = [decode_image_thumb(fig_data["input"])]
        truth = decode_sigma_thumb(fig_data["truth"]) if is_map else None
        tiles.append(colorize(truth, vmax) if is_map else decode_image_thumb(fig_data["mask"]))
        for run in runs:
            enc = run["datasets"][dataset]["maps"].get(name)
            pred = decode_sigma_thumb(enc) if enc else None
            tiles.append(colorize(pred, vmax) if pred is not None else None)
            if is_map:
                tiles.append(colorize(np.abs(pred - truth), vmax) if pred is not None and pred.shape == truth.shape else None)
        for col, tile in enumerate(tiles):
            ax = axes[row, col]
            ax.axis("off")
            if tile is None:
                continue
            ax.imshow(tile[..., ::-1] if tile.ndim == 3 else tile, cmap=None if tile.ndim == 3 else "gray", vmin=0, vmax=255)
            if row == 0:
                ax.set_title(titles[col], fontsize=7)
        axes[row, 0].text(-0.04, 0.5, name, fontsize=7, rotation=90, ha="right", va="center", transform=axes[row, 0].transAxes)
    fig.suptitle(f"{dataset}: colour scale fixed at 0–{vmax:g} px σ (inferno)", fontsize=9)
    sm = plt.cm.ScalarMappable(cmap="inferno", norm=plt.Normalize(0, vmax))
    fig.colorbar(sm, ax=axes.ravel().tolist(), fraction=0.015, pad=0.01, label="σ (px)")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# The report


def build_report(result_files: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write ``OUT/report.md`` and its figures; returns the Markdown path."""
    if not result_files:
        raise HdmeError("give at least one results JSON (from hdme bench accuracy --json or hdme bench latency --json)")
    results, latency, latency_meta = load_results(result_files)
    out_dir = make_folder(out_dir)
    parts = ["# hdme benchmark report", ""]
    if results:
        parts += [f"Results of hdme {results.get('hdme_version', '?')}, {results.get('created', '')}.", "", render_markdown(results)]
        figures = [
            ("Mean predicted against mean true σ per bin of the true σ", plot_sigma_bins(results, out_dir / "sigma_bins.png")),
            ("σ along the middle row of each RTF image against the ground truth", plot_rtf_profiles(results, out_dir / "rtf_profiles.png")),
        ]
        for name in results["datasets"]:
            figures.append((f"{name}: input, truth, predictions", plot_grid(results, name, out_dir / f"grid_{_slug(name)}.png")))
        for caption, path in figures:
            if path is not None:
                parts += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    if latency:
        from hdme.runtime.bench import LATENCY_COLUMNS, ResultsTable, plot_latency

        table = ResultsTable("Latency", LATENCY_COLUMNS, rows=latency, meta=latency_meta)
        plot_latency(table, out_dir / "latency_vs_resolution.png")
        parts += [table.to_markdown(), "![Latency against resolution](latency_vs_resolution.png)", ""]
    report = out_dir / "report.md"
    write_text(report, "\n".join(parts).rstrip() + "\n")
    return report


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
