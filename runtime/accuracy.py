"""Accuracy benchmark: every model × backend × precision (and the Zhuo–Sim baseline) on synthetic
and real data, in one table.

Protocols (hdme.metrics):
- σ maps (synthetic sets, folders with maps): MSE and MAE on σ/10, RMSE in px, δ1–δ3 on pixels with
  true σ ≥ 0.5 px; per image, then the mean over images.
- RTF: the DMENet protocol (clip to [0, 3.275] px, divide by 3.275), per image, then the mean over
  images, with DMENet's published per-image MAE beside.
- Masks (CUHK, DUT, folders with masks): best F (β² = 0.3, in-focus region positive) over thresholds
  of the per-image normalised map, and the MAE of that map; per image, then the mean.
- Every set with σ maps also gets rows per bin of the true σ (hdme.metrics.SigmaBins): mean predicted
  against mean true σ, MAE, share of the pixels and of the error.
Latency is the wall time of ``predict`` per image (after one warm-up image), in ms. Sets are built and
scored by the evaluation harness (hdme.evaluation).

The JSON keeps per-image results, the σ bins and the small amount of picture data the report draws
(one row profile per RTF image, thumbnails of a few inputs, truths and predictions).
"""

from __future__ import annotations

import base64
import platform
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from hdme import __version__
from hdme.console import make_console
from hdme.datasets import Sample
from hdme.errors import HdmeError
from hdme.evaluation import BIN_TABLE_HEADERS, EvalSet, SigmaPredictor, bin_table_rows, load_eval_set
from hdme.evaluation import evaluate as harness_evaluate

RESULTS_KIND = "hdme-accuracy"
# DMENet_BDCS, re-released checkpoint, per-image MAE (σ/3.275) on the public RTF images
# (codeslake/DMENet evaluation/readme.md); their mean is 0.0504.
DMENET_RTF_MAE = {"image_01": 0.0643, "image_05": 0.0335, "image_22": 0.0535}
FIGURE_IMAGES = 3  # images per dataset kept as thumbnails for the report's grid
THUMB_SIDE = 160
THUMB_SIGMA_STEP = 0.04  # px per level of the 8-bit σ thumbnails (0–10.2 px)

# Columns of the one results table, per protocol: (metric key, header).
PROTOCOL_COLUMNS = {
    "map": (("mae", "MAE"), ("mse", "MSE"), ("rmse", "RMSE px"), ("d1", "δ1"), ("d2", "δ2"), ("d3", "δ3")),
    "rtf": (("mae", "MAE"), ("mse", "MSE")),
    "mask": (("best_f", "best F"), ("mae", "MAE")),
}


# A row's precision before its engine has loaded the model and said which it runs: the model's own.
OWN_PRECISION = "own"


@dataclass
class Method:
    """One row of the table: how to build its predictor and how to label it."""

    method: str  # "hdme" or "zhuo-sim"
    model: str | None
    backend: str
    precision: str
    build: Callable[[], SigmaPredictor]
    tta: str = "none"
    extend_range: bool = False

    @property
    def label(self) -> str:
        if self.method == "zhuo-sim":
            return "Zhuo–Sim (2011)"
        views = ("" if self.tta == "none" else f" · {self.tta}") + (" · extended range" if self.extend_range else "")
        return f"{Path(self.model).name if self.model else 'default'} · {self.backend} · {self.precision}{views}"


# ---------------------------------------------------------------------------------------------
# Methods


def methods_for(
    models: Iterable[str | None],
    backends: Iterable[str],
    methods: Iterable[str],
    max_side: int | None = None,
    ttas: Iterable[str] = (),
    precisions: Iterable[str] = (),
    extend_range: bool = False,
) -> list[Method]:
    """The rows to evaluate: each model × backend × precision × test-time augmentation for ``hdme``
    (precision: the model's own where none is given), one row for ``zhuo-sim``. ``extend_range``:
    the ``hdme`` rows also estimate at 1/2 and 1/4 scale and merge, as ``DefocusPredictor`` does."""
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
                            out.append(Method("hdme", model, backend, precision or OWN_PRECISION,
                                              _builder("hdme", model, backend, max_side, tta, precision, extend_range),
                                              tta, extend_range))
        else:
            raise HdmeError(f"unknown method '{method}' (choose hdme or zhuo-sim)")
    return out


def _builder(method: str, model: str | None, backend: str, max_side: int | None, tta: str | None = None,
             precision: str | None = None, extend_range: bool = False) -> Callable[[], SigmaPredictor]:
    def build() -> SigmaPredictor:
        from hdme.runtime.classic import predictor_for

        return predictor_for(method, model, backend, max_side, tta=tta, precision=precision, extend_range=extend_range)

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
    if isinstance(precision, str) and precision and method.precision == OWN_PRECISION:
        method.precision = precision


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


def evaluate(predictor: SigmaPredictor, dataset: EvalSet, on_image: Callable[[], None] | None = None) -> dict:
    """The harness's ``evaluate`` plus what the report draws: thumbnails of the first predictions,
    the middle row of each RTF prediction, DMENet's published MAE beside each RTF image."""
    maps, profiles = {}, {}

    def keep(i: int, sample, pred: np.ndarray) -> None:
        if i < FIGURE_IMAGES:
            maps[sample.name] = encode_sigma_thumb(pred)
        if dataset.protocol == "rtf":
            row = sample.sigma.shape[0] // 2
            profiles[sample.name] = {"row": row, "pred": pred[row].round(3).tolist()}
        if on_image:
            on_image()

    out = harness_evaluate(predictor, dataset, on_prediction=keep)
    if dataset.protocol == "rtf":
        for entry in out["per_image"]:
            if entry["name"] in DMENET_RTF_MAE:
                entry["dmenet_mae"] = DMENET_RTF_MAE[entry["name"]]
    out["maps"] = maps
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
    datasets: list[EvalSet] = []
    skipped: dict[str, str] = {}
    for spec in dataset_specs:
        try:
            dataset = load_eval_set(spec)
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
                "extend_range": method.extend_range,
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


def sigma_bin_tables(results: dict) -> dict[str, list[list[str]]]:
    """Per set with σ maps: one row per run and bin of the true σ (method first, then
    ``BIN_TABLE_HEADERS``)."""
    tables = {}
    for name, info in results["datasets"].items():
        rows = []
        for run in results["runs"]:
            bins = run["datasets"].get(name, {}).get("sigma_bins")
            if bins:
                rows += [[run["label"], *cells] for cells in bin_table_rows(bins)]
        if rows:
            tables[name] = rows
    return tables


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
    for name, rows in sigma_bin_tables(results).items():
        parts += ["", f"### {name}, by true σ", "", markdown_table(["method", *BIN_TABLE_HEADERS], rows)]
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
    console = console or make_console()
    console.width = max(console.width, needed)
    console.print(table)
    for name, bin_rows in sigma_bin_tables(results).items():
        table = Table(title=f"{name}, by true σ")
        for i, header in enumerate(("method", *BIN_TABLE_HEADERS)):
            table.add_column(header, justify="left" if i < 2 else "right", no_wrap=True)
        for row in bin_rows:
            table.add_row(*row)
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
    extend_range: bool = False,
) -> dict:
    """``hdme bench accuracy``: evaluate, print the table, write the JSON and Markdown files."""
    from hdme.io import check_output_file, write_json, write_text

    for path in (json_path, markdown_path):
        if path:
            check_output_file(path)  # before the evaluation, not after it
    console = make_console(stderr=True)
    rows = methods_for(models, backends, methods or ["hdme", "zhuo-sim"], max_side, ttas, precisions, extend_range)
    results = run_accuracy(datasets or DEFAULT_DATASETS, rows, report=lambda line: console.print(line, style="yellow"))
    if not results["runs"]:
        raise HdmeError("nothing was evaluated: no dataset or no model could be loaded (see the lines above)")
    print_table(results, make_console())
    if json_path:
        write_json(json_path, results)
        console.print(f"results: {json_path}")
    if markdown_path:
        write_text(markdown_path, render_markdown(results))
        console.print(f"table: {markdown_path}")
    return results
