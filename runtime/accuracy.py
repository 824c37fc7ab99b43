"""Accuracy benchmark: every model × backend × precision (and the Zhuo–Sim baseline) on synthetic
and real data, in one table.

Protocols (hdme.metrics):
- σ maps (synthetic sets, folders with maps): MSE and MAE on σ/10, RMSE in px, δ1–δ3 on pixels with
  true σ ≥ 0.5 px; per image, then the mean over images.
- RTF: the DMENet protocol (clip to [0, 3.275] px, divide by 3.275), per image, then the mean over
  images, with DMENet's published per-image MAE beside.
- Masks (CUHK, DUT, folders with masks): best F (β² = 0.3, in-focus region positive) over thresholds
  of the per-image normalised map, and the MAE of that map; per image, then the mean.
Latency is the wall time of ``predict`` per image (after one warm-up image), in ms.

The JSON keeps per-image results and the small amount of picture data the report draws (binned error
against true σ, one row profile per RTF image, thumbnails of a few inputs, truths and predictions).
"""

from __future__ import annotations

import base64
import platform
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Protocol

import cv2
import numpy as np

from hdme import __version__
from hdme.conventions import SIGMA_MAX
from hdme.datasets import Sample, load_dataset
from hdme.errors import HdmeError
from hdme.metrics import blur_detection_metrics, map_metrics, mean_metrics, rtf_metrics

RESULTS_KIND = "hdme-accuracy"
SYNTHETIC_SEED = 7_000_001  # held out: training seeds are small integers
SYNTHETIC_SIZE = 256
SYNTHETIC_COUNT = 100
# DMENet_BDCS, re-released checkpoint, per-image MAE (σ/3.275) on the public RTF images
# (codeslake/DMENet evaluation/readme.md); their mean is 0.0504.
DMENET_RTF_MAE = {"image_01": 0.0643, "image_05": 0.0335, "image_22": 0.0535}
ERROR_BIN_EDGES = np.arange(0.0, SIGMA_MAX + 0.25, 0.5)
FIGURE_IMAGES = 3  # images per dataset kept as thumbnails for the report's grid
THUMB_SIDE = 160
THUMB_SIGMA_STEP = 0.04  # px per level of the 8-bit σ thumbnails (0–10.2 px)

# Columns of the one results table, per protocol: (metric key, header).
PROTOCOL_COLUMNS = {
    "map": (("mae", "MAE"), ("mse", "MSE"), ("rmse", "RMSE px"), ("d1", "δ1"), ("d2", "δ2"), ("d3", "δ3")),
    "rtf": (("mae", "MAE"), ("mse", "MSE")),
    "mask": (("best_f", "best F"), ("mae", "MAE")),
}


class SigmaPredictor(Protocol):
    def predict(self, rgb: np.ndarray) -> np.ndarray: ...


@dataclass
class Method:
    """One row of the table: how to build its predictor and how to label it."""

    method: str  # "hdme" or "zhuo-sim"
    model: str | None
    backend: str
    precision: str
    build: Callable[[], SigmaPredictor]
    tta: str = "none"

    @property
    def label(self) -> str:
        if self.method == "zhuo-sim":
            return "Zhuo–Sim (2011)"
        views = "" if self.tta == "none" else f" · {self.tta}"
        return f"{Path(self.model).name if self.model else 'default'} · {self.backend} · {self.precision}{views}"


@dataclass
class Dataset:
    name: str
    protocol: str  # "map", "rtf" or "mask"
    samples: list[Sample]
    note: str = ""


# ---------------------------------------------------------------------------------------------
# Methods


def methods_for(
    models: Iterable[str | None],
    backends: Iterable[str],
    methods: Iterable[str],
    max_side: int | None = None,
    ttas: Iterable[str] = (),
    precisions: Iterable[str] = (),
) -> list[Method]:
    """The rows to evaluate: each model × backend × precision × test-time augmentation for ``hdme``
    (precision: the model's own where none is given), one row for ``zhuo-sim``."""
    from hdme.runtime.predict import DEFAULT_TTA, check_tta

    out: list[Method] = []
    models = list(models) or [None]
    backends = list(backends) or ["auto"]
    ttas = [check_tta(t) for t in dict.fromkeys(ttas)] or [DEFAULT_TTA]
    for method in dict.fromkeys(methods):
        if method == "zhuo-sim":
            out.append(Method("zhuo-sim", None, "numpy/opencv", "fp32", _builder("zhuo-sim", None, "auto", max_side)))
        elif method == "hdme":
            for model in models:
                for backend in backends:
                    for precision in list(dict.fromkeys(precisions)) or [None]:
                        for tta in ttas:
                            out.append(Method("hdme", model, backend, precision or "fp32",
                                              _builder("hdme", model, backend, max_side, tta, precision), tta))
        else:
            raise HdmeError(f"unknown method '{method}' (choose hdme or zhuo-sim)")
    return out


def _builder(method: str, model: str | None, backend: str, max_side: int | None, tta: str | None = None,
             precision: str | None = None) -> Callable[[], SigmaPredictor]:
    def build() -> SigmaPredictor:
        from hdme.runtime.classic import predictor_for

        return predictor_for(method, model, backend, max_side, tta=tta, precision=precision)

    return build


def _describe_backend(predictor: SigmaPredictor, method: Method) -> None:
    """After loading, name the backend, precision and model file that ``auto`` and the default chose."""
    backend = getattr(predictor, "backend", None)
    model_path = getattr(backend, "model_path", None)
    if method.model is None and model_path is not None:
        method.model = str(model_path)
    name = getattr(backend, "name", None)
    if isinstance(name, str) and name:
        method.backend = name
    precision = getattr(backend, "precision", None)
    if isinstance(precision, str) and precision and method.precision == "fp32":
        method.precision = precision


# ---------------------------------------------------------------------------------------------
# Datasets


def synthetic_samples(count: int = SYNTHETIC_COUNT, size: int = SYNTHETIC_SIZE, seed: int = SYNTHETIC_SEED) -> list[Sample]:
    """A fixed-seed held-out synthetic set rendered by hdme.train.synth (needs torch)."""
    try:
        from hdme.train.synth import SyntheticStream, get_recipe
    except ImportError as exc:
        raise HdmeError(
            f"dataset 'synthetic' needs the training extra ({exc}); install 'hdme[train]' or pass a set made "
            "by `hdme data make OUT` as --dataset OUT"
        ) from None
    stream = SyntheticStream(get_recipe("hdme"), size=size, batch=1, seed=seed)
    samples = []
    for i in range(count):
        image, sigma = stream.next_batch()
        rgb = np.clip(np.asarray(image[0]).transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        samples.append(Sample(f"synthetic_{i:04d}", rgb, sigma=np.asarray(sigma[0, 0], dtype=np.float32)))
    return samples


def _split_limit(spec: str) -> tuple[str, int | None]:
    name, sep, count = spec.rpartition(":")
    if sep and count.isdigit() and not Path(spec).exists():
        if int(count) < 1:
            raise HdmeError(f"dataset '{spec}': the count after ':' must be at least 1")
        return name, int(count)
    return spec, None


def load_benchmark_dataset(spec: str) -> Dataset:
    """``synthetic[:N]``, ``rtf``, ``cuhk``, ``dut`` (each with an optional ``:N`` limit) or a folder;
    a folder made by ``hdme data make`` is read from its ``test`` split."""
    name, limit = _split_limit(spec)
    if name == "synthetic":
        return Dataset("synthetic", "map", synthetic_samples(limit or SYNTHETIC_COUNT), f"seed {SYNTHETIC_SEED}, {SYNTHETIC_SIZE}²")
    note = ""
    path = Path(name)
    if name not in ("rtf", "cuhk", "dut") and (path / "manifest.json").is_file() and (path / "test").is_dir():
        path = path / "test"
        note = f"test split of {name}"
        name = str(path)
    samples = load_dataset(name, limit=limit)
    if name == "rtf":
        protocol = "rtf"
    else:
        kinds = {s.kind for s in samples}
        if len(kinds) > 1:
            raise HdmeError(f"dataset '{spec}' mixes σ maps and masks; split it into two folders")
        protocol = kinds.pop()
    label = name if name in ("rtf", "cuhk", "dut") else Path(spec).name or spec
    return Dataset(label, protocol, samples, note)


# ---------------------------------------------------------------------------------------------
# Evaluation


def _b64(img: np.ndarray, ext: str, params: tuple[int, ...] = ()) -> str:
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise HdmeError("could not encode a thumbnail")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _thumb_size(shape: tuple[int, ...]) -> tuple[int, int]:
    h, w = shape[:2]
    scale = min(1.0, THUMB_SIDE / max(h, w))
    return max(1, round(w * scale)), max(1, round(h * scale))


def encode_sigma_thumb(sigma: np.ndarray) -> str:
    """A σ map (px of the original image) as a small 8-bit PNG in steps of THUMB_SIGMA_STEP, base64."""
    small = cv2.resize(sigma.astype(np.float32), _thumb_size(sigma.shape), interpolation=cv2.INTER_AREA)
    return _b64(np.clip(np.rint(small / THUMB_SIGMA_STEP), 0, 255).astype(np.uint8), ".png")


def decode_sigma_thumb(data: str) -> np.ndarray:
    return _decode(data).astype(np.float32) * THUMB_SIGMA_STEP


def decode_image_thumb(data: str) -> np.ndarray:
    """A thumbnail of an input (BGR uint8) or of a mask (uint8, 255 = in focus)."""
    return _decode(data)


def _decode(data: str) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise HdmeError("a thumbnail in the results file is corrupt")
    return arr


def _truth_thumbs(sample: Sample) -> dict:
    rgb = cv2.resize(sample.image, _thumb_size(sample.image.shape), interpolation=cv2.INTER_AREA)
    out = {"input": _b64(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 85))}
    if sample.sigma is not None:
        out["truth"] = encode_sigma_thumb(sample.sigma)
    else:
        mask = cv2.resize(sample.in_focus.astype(np.uint8) * 255, _thumb_size(sample.in_focus.shape), interpolation=cv2.INTER_NEAREST)
        out["mask"] = _b64(mask, ".png")
    return out


def score(protocol: str, pred: np.ndarray, sample: Sample) -> dict[str, float]:
    if protocol == "rtf":
        return rtf_metrics(pred, sample.sigma)
    if protocol == "map":
        return map_metrics(pred, sample.sigma)
    return blur_detection_metrics(pred, sample.in_focus)


class _ErrorBySigma:
    """Mean |error| of σ (px) in bins of the true σ, accumulated over images."""

    def __init__(self) -> None:
        self.abs_sum = np.zeros(len(ERROR_BIN_EDGES) - 1)
        self.signed_sum = np.zeros(len(ERROR_BIN_EDGES) - 1)
        self.count = np.zeros(len(ERROR_BIN_EDGES) - 1, np.int64)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        h, w = min(pred.shape[0], truth.shape[0]), min(pred.shape[1], truth.shape[1])
        t = truth[:h, :w].ravel().astype(np.float64)
        e = pred[:h, :w].ravel().astype(np.float64) - t
        idx = np.clip(np.digitize(t, ERROR_BIN_EDGES) - 1, 0, len(self.count) - 1)
        self.abs_sum += np.bincount(idx, np.abs(e), minlength=len(self.count))
        self.signed_sum += np.bincount(idx, e, minlength=len(self.count))
        self.count += np.bincount(idx, minlength=len(self.count))

    def to_json(self) -> dict:
        n = np.maximum(self.count, 1)
        used = self.count > 0
        return {
            "bin_edges": ERROR_BIN_EDGES.tolist(),
            "count": self.count.tolist(),
            "mean_abs_error": np.where(used, self.abs_sum / n, np.nan).round(5).tolist(),
            "mean_error": np.where(used, self.signed_sum / n, np.nan).round(5).tolist(),
        }


def evaluate(predictor: SigmaPredictor, dataset: Dataset, on_image: Callable[[], None] | None = None) -> dict:
    """Run one predictor over one dataset: mean metrics, per-image metrics, latency, figure data."""
    per_image = []
    errors = _ErrorBySigma() if dataset.protocol in ("map", "rtf") else None
    maps, profiles = {}, {}
    predictor.predict(dataset.samples[0].image)  # warm-up: first-call costs are not per-image latency
    for i, sample in enumerate(dataset.samples):
        start = time.perf_counter()
        pred = np.asarray(predictor.predict(sample.image), dtype=np.float32)
        ms = (time.perf_counter() - start) * 1e3
        if pred.shape != sample.image.shape[:2]:
            raise HdmeError(f"{sample.name}: the predictor returned {pred.shape}, not the image's {sample.image.shape[:2]}")
        metrics = score(dataset.protocol, pred, sample)
        entry = {"name": sample.name, "ms": round(ms, 3), **{k: round(v, 6) for k, v in metrics.items()}}
        if dataset.protocol == "rtf" and sample.name in DMENET_RTF_MAE:
            entry["dmenet_mae"] = DMENET_RTF_MAE[sample.name]
        per_image.append(entry)
        if errors is not None:
            errors.add(pred, sample.sigma)
        if i < FIGURE_IMAGES:
            maps[sample.name] = encode_sigma_thumb(pred)
        if dataset.protocol == "rtf":
            row = sample.sigma.shape[0] // 2
            profiles[sample.name] = {"row": row, "pred": pred[row].round(3).tolist()}
        if on_image:
            on_image()
    metrics_only = [{k: v for k, v in e.items() if k not in ("name", "ms", "dmenet_mae")} for e in per_image]
    out = {
        "mean": mean_metrics(metrics_only),
        "latency_ms": float(np.mean([e["ms"] for e in per_image])),
        "per_image": per_image,
        "maps": maps,
    }
    if errors is not None:
        out["error_by_sigma"] = errors.to_json()
    if profiles:
        out["profiles"] = profiles
    return out


def run_accuracy(
    dataset_specs: Iterable[str],
    methods: list[Method],
    report: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Evaluate every method on every dataset; unavailable datasets and models are reported in one
    line each and left out, the rest still run. Returns the results document (see module doc)."""
    datasets: list[Dataset] = []
    skipped: dict[str, str] = {}
    for spec in dataset_specs:
        try:
            dataset = load_benchmark_dataset(spec)
        except HdmeError as exc:
            skipped[spec] = str(exc)
            report(f"skipping dataset {spec}: {exc}")
            continue
        if any(d.name == dataset.name for d in datasets):
            # Folders of one name (a/test, b/test) would share one column: name them by their paths.
            dataset = replace(dataset, name=spec)
        if any(d.name == dataset.name for d in datasets):
            report(f"skipping dataset {spec}: given twice")
            continue
        datasets.append(dataset)
    results = {
        "kind": RESULTS_KIND,
        "hdme_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "datasets": {
            d.name: {
                "protocol": d.protocol,
                "note": d.note,
                "images": [{"name": s.name, "size": list(s.image.shape[:2])} for s in d.samples],
                "figures": {s.name: _truth_thumbs(s) for s in d.samples[:FIGURE_IMAGES]},
                **(
                    {"profiles": {s.name: {"row": s.sigma.shape[0] // 2, "truth": s.sigma[s.sigma.shape[0] // 2].round(3).tolist()} for s in d.samples}}
                    if d.protocol == "rtf"
                    else {}
                ),
            }
            for d in datasets
        },
        "skipped_datasets": skipped,
        "skipped_methods": {},
        "runs": [],
    }
    if not datasets:
        return results
    total = len(methods) * sum(len(d.samples) for d in datasets)
    with _progress(progress, total) as advance:
        for method in methods:
            try:
                predictor = method.build()
            except HdmeError as exc:
                results["skipped_methods"][method.label] = str(exc)
                report(f"skipping {method.label}: {exc}")
                advance(sum(len(d.samples) for d in datasets))
                continue
            _describe_backend(predictor, method)
            run = {
                "label": method.label,
                "method": method.method,
                "model": method.model,
                "backend": method.backend,
                "precision": method.precision,
                "tta": method.tta,
                "datasets": {},
            }
            for d in datasets:
                run["datasets"][d.name] = evaluate(predictor, d, on_image=lambda: advance(1))
            close = getattr(predictor, "close", None)
            if callable(close):
                close()
            results["runs"].append(run)
    return results


class _progress:
    """A rich progress bar when asked for, a no-op otherwise; yields ``advance(n)``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.bar = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n=1: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("accuracy"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
        self.bar.__enter__()
        task = self.bar.add_task("images", total=self.total)
        return lambda n=1: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


# ---------------------------------------------------------------------------------------------
# The table


def table_columns(results: dict) -> list[tuple[str, str]]:
    """(key, header) of the table's columns; keys are ``dataset/metric`` and ``dataset/ms``."""
    cols = [("label", "method"), ("backend", "backend"), ("precision", "precision")]
    for name, info in results["datasets"].items():
        for key, header in PROTOCOL_COLUMNS[info["protocol"]]:
            cols.append((f"{name}/{key}", f"{name} {header}"))
        cols.append((f"{name}/ms", f"{name} ms/img"))
    return cols


def accuracy_rows(results: dict) -> list[dict]:
    """One dict per table row (raw numbers), keyed as ``table_columns`` says; a DMENet row carries
    its published RTF MAE when the RTF images evaluated are the public ones."""
    rows = []
    for run in results["runs"]:
        row = {"label": run["label"], "backend": run["backend"], "precision": run["precision"]}
        for name, res in run["datasets"].items():
            protocol = results["datasets"][name]["protocol"]
            for key, _ in PROTOCOL_COLUMNS[protocol]:
                row[f"{name}/{key}"] = res["mean"].get(key)
            row[f"{name}/ms"] = res["latency_ms"]
        rows.append(row)
    rtf = results["datasets"].get("rtf")
    if rtf:
        names = [img["name"] for img in rtf["images"]]
        if names and all(n in DMENET_RTF_MAE for n in names):
            rows.append(
                {"label": "DMENet (published)", "backend": "—", "precision": "—", "rtf/mae": float(np.mean([DMENET_RTF_MAE[n] for n in names]))}
            )
    return rows


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not np.isfinite(value):
            return "—"
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}"
    return str(value)


def rtf_per_image_rows(results: dict) -> list[dict]:
    """RTF MAE per image for each run, with DMENet's published value beside."""
    rtf = results["datasets"].get("rtf")
    if not rtf:
        return []
    rows = []
    for img in rtf["images"]:
        row = {"image": img["name"], "DMENet (published)": DMENET_RTF_MAE.get(img["name"])}
        for run in results["runs"]:
            for entry in run["datasets"]["rtf"]["per_image"]:
                if entry["name"] == img["name"]:
                    row[run["label"]] = entry["mae"]
        rows.append(row)
    return rows


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    cols = table_columns(results)
    rows = accuracy_rows(results)
    parts = [
        "## Accuracy",
        "",
        markdown_table([h for _, h in cols], [[_fmt(r.get(k)) for k, _ in cols] for r in rows]),
        "",
        "MAE/MSE: σ/10 for σ maps, σ/3.275 for RTF (DMENet protocol); RMSE in px; δ on pixels with "
        "true σ ≥ 0.5 px; best F with β² = 0.3, in-focus region positive; all per image, then the mean over "
        f"images. ms/img: wall time of one prediction on {results['machine']['processor']} "
        f"({results['machine']['platform']}).",
    ]
    per_image = rtf_per_image_rows(results)
    if per_image:
        heads = list(per_image[0].keys())
        parts += ["", "### RTF, MAE per image (σ/3.275)", "", markdown_table(heads, [[_fmt(r.get(h)) for h in heads] for r in per_image])]
    notes = [f"- {name}: {info['note']}" for name, info in results["datasets"].items() if info["note"]]
    notes += [f"- dataset {k} not evaluated: {v}" for k, v in results["skipped_datasets"].items()]
    notes += [f"- {k} not evaluated: {v}" for k, v in results["skipped_methods"].items()]
    if notes:
        parts += ["", *notes]
    return "\n".join(parts) + "\n"


def print_table(results: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = table_columns(results)
    rows = [[_fmt(row.get(k)) for k, _ in cols] for row in accuracy_rows(results)]
    table = Table(title="hdme accuracy")
    for i, (_, header) in enumerate(cols):
        table.add_column(header, justify="left" if i < 3 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    # A wide table is more useful overflowing a narrow terminal than with its numbers cut to "…".
    needed = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, (_, h) in enumerate(cols)) + 1
    console = console or Console()
    console.width = max(console.width, needed)
    console.print(table)


DEFAULT_DATASETS = ("synthetic", "rtf", "cuhk", "dut")


def bench_accuracy(
    datasets: list[str],
    models: list[str],
    backends: list[str],
    methods: list[str],
    json_path: Path | None,
    markdown_path: Path | None,
    max_side: int | None,
    ttas: list[str] = (),
    precisions: list[str] = (),
) -> dict:
    """``hdme bench accuracy``: evaluate, print the table, write the JSON and Markdown files."""
    from rich.console import Console

    from hdme.io import write_json, write_text

    console = Console(stderr=True)
    rows = methods_for(models, backends, methods or ["hdme", "zhuo-sim"], max_side, ttas, precisions)
    results = run_accuracy(datasets or DEFAULT_DATASETS, rows, report=lambda line: console.print(line, style="yellow", markup=False))
    if not results["runs"]:
        raise HdmeError("nothing was evaluated: no dataset or no model could be loaded (see the lines above)")
    print_table(results, Console())
    if json_path:
        write_json(json_path, results)
        console.print(f"results: {json_path}")
    if markdown_path:
        write_text(markdown_path, render_markdown(results))
        console.print(f"table: {markdown_path}")
    return results
