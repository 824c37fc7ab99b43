"""Latency benchmark: backends × models/precisions × sizes × batch, per stage, like trtexec.

Stages: preprocess (uint8 frames → float NCHW), h2d, compute, d2h (where the backend has a
device; the device is synchronised before each clock read), postprocess (σ/10 → σ px) and
end-to-end. ``ResultsTable`` is what both the CLI and the Python API get back.
"""

from __future__ import annotations

import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hdme import __version__
from hdme.conventions import output_to_sigma
from hdme.errors import HdmeError
from hdme.io import atomic_path, write_json, write_text
from hdme.runtime.backends import BACKEND_NAMES, ENGINES, create_backend, model_file_kind, shipped_artifacts
from hdme.conventions import rgb_to_input
from hdme.runtime.predict import pad_to_multiple
from hdme.runtime.stats import UNSTABLE_CV, is_unstable, latency_stats

DEFAULT_SIZES = ((256, 256), (480, 640), (720, 1280))
LATENCY_STAGES = ("preprocess", "h2d", "compute", "d2h", "postprocess", "end-to-end")


@dataclass
class ResultsTable:
    """Rows of results (full records, nested dicts allowed), the columns people see, notes."""

    title: str
    columns: list[tuple[str, str]]  # (row key, header); dotted keys reach into nested dicts
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def cell(self, row: dict, key: str) -> str:
        value = row
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.1%}" if key.endswith(".cv") else f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    def to_dict(self) -> dict:
        return {"title": self.title, "meta": self.meta, "rows": self.rows, "notes": self.notes}

    def write_json(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    def to_markdown(self) -> str:
        head = "| " + " | ".join(h for _, h in self.columns) + " |"
        rule = "|" + "---|" * len(self.columns)
        body = ["| " + " | ".join(self.cell(r, k) for k, _ in self.columns) + " |" for r in self.rows]
        notes = [f"- {n}" for n in self.notes]
        meta = ", ".join(f"{k}: {v}" for k, v in self.meta.items())
        return "\n".join([f"## {self.title}", "", meta, "", head, rule, *body, "", *notes]).rstrip() + "\n"

    def write_markdown(self, path: str | Path) -> None:
        write_text(path, self.to_markdown())

    def to_rich(self, columns: list[tuple[str, str]] | None = None):
        """A rich table of ``columns`` (default: all), for a screen narrower than the files."""
        from rich.table import Table

        columns = columns or self.columns
        table = Table(title=self.title)
        for key, header in columns:
            table.add_column(header, justify="left" if key in ("backend", "model", "device", "precision", "size", "mode") else "right")
        for row in self.rows:
            table.add_row(*(self.cell(row, k) for k, _ in columns))
        return table


LATENCY_COLUMNS = [
    ("mode", "mode"), ("backend", "backend"), ("device", "device"), ("model", "model"), ("precision", "prec"),
    ("size", "H×W"), ("batch", "B"),
    ("stages.end-to-end.mean", "mean ms"), ("stages.end-to-end.median", "median"), ("stages.end-to-end.p90", "p90"),
    ("stages.end-to-end.p95", "p95"), ("stages.end-to-end.p99", "p99"), ("stages.end-to-end.std", "std"),
    ("stages.end-to-end.cv", "CV"), ("fps", "FPS"),
    ("stages.preprocess.mean", "pre"), ("stages.h2d.mean", "h2d"), ("stages.compute.mean", "compute"),
    ("stages.d2h.mean", "d2h"), ("stages.postprocess.mean", "post"), ("stream_ratio", "stream/infer"),
]

LATENCY_SCREEN_COLUMNS = [
    c for c in LATENCY_COLUMNS
    if c[0] not in ("device", "stages.end-to-end.p95", "stages.end-to-end.std", "stages.preprocess.mean", "stages.postprocess.mean")
]


def _host_meta() -> dict:
    import os
    from importlib.metadata import PackageNotFoundError, version

    engines = {}
    for engine in ENGINES:
        try:
            engines[engine.name] = version(engine.requires[0])
        except PackageNotFoundError:
            pass
    return {
        "hdme": __version__, "host": platform.node(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), **engines,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def measure(backend, size: tuple[int, int], batch: int = 1, warmup: int = 5, iters: int | None = None,
            duration: float | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Per-stage milliseconds of ``iters`` runs (or as many as fit in ``duration`` s) after warm-up."""
    return measure_in_turn([backend], size, batch, warmup, iters, duration, seed)[0]


def measure_in_turn(backends: list, size: tuple[int, int], batch: int = 1, warmup: int = 5, iters: int | None = None,
                    duration: float | None = None, seed: int = 0) -> list[dict[str, list[float]]]:
    """``measure`` for several backends at once: one run of each in turn, round after round, so that
    on a machine whose load changes all of them meet the same load and their ratios hold.
    ``duration``: seconds per backend."""
    h, w = size
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    x_buf = np.empty((batch, 3, h, w), np.float32)
    samples: list[dict[str, list[float]]] = [{s: [] for s in LATENCY_STAGES} for _ in backends]

    def once(backend, record: dict[str, list[float]] | None) -> None:
        t0 = time.perf_counter()
        for i in range(batch):
            rgb_to_input(frames[i], x_buf[i:i + 1])
        x = pad_to_multiple(x_buf, backend.multiple)
        t1 = time.perf_counter()
        y, times = backend.infer_timed(x)
        t2 = time.perf_counter()
        output_to_sigma(y[:, 0, :h, :w])
        t3 = time.perf_counter()
        if record is not None:
            for stage, ms in (("preprocess", (t1 - t0) * 1e3), ("h2d", times.h2d), ("compute", times.compute),
                              ("d2h", times.d2h), ("postprocess", (t3 - t2) * 1e3), ("end-to-end", (t3 - t0) * 1e3)):
                if ms is not None:
                    record[stage].append(ms)

    def loop() -> None:
        for _ in range(warmup):
            for backend in backends:
                once(backend, None)
        seconds = duration if duration is not None else 3.0 if iters is None else 0.0
        end = time.perf_counter() + seconds * len(backends)
        n = 0
        while (iters is not None and n < iters) or (iters is None and (n < 3 or time.perf_counter() < end)):
            for backend, record in zip(backends, samples):
                once(backend, record)
            n += 1

    on_worker_thread(loop)
    return [{s: v for s, v in record.items() if v} for record in samples]


def on_worker_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` on its own thread, as the streaming pipeline runs inference, and wait for it.

    Besides matching the pipeline, this keeps PyTorch comparable: on a busy CPU its OpenMP pool
    driven from the main thread was measured up to 10× slower than from any other thread."""
    error: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    worker = threading.Thread(target=target, name="hdme-bench", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if error:
        raise error[0]


def measure_stream(backend, size: tuple[int, int], frames: int = 60) -> dict:
    """End-to-end FPS of the streaming pipeline (no sinks) on a generated video of ``size``."""
    import cv2

    from hdme.runtime.pipeline import StreamPipeline
    from hdme.runtime.sources import VideoFileSource

    h, w = size
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)
    with tempfile.TemporaryDirectory(prefix="hdme-bench-") as tmp:
        video = Path(tmp) / "stream.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (w, h))
        for i in range(frames):
            writer.write(np.roll(base, 4 * i, axis=1))
        writer.release()
        stats = StreamPipeline(VideoFileSource(video), backend).run()
    return stats.summary()


def _configs(models, backends, precisions) -> list[tuple[str | None, str, str | None]]:
    from hdme.weights import DEFAULT_MODEL

    unknown = [b for b in backends or [] if b not in BACKEND_NAMES[1:]]
    if unknown:
        raise HdmeError(f"unknown backend '{unknown[0]}' (choose from {', '.join(BACKEND_NAMES[1:])})")
    out = []
    for model in models or [None]:
        kind = model_file_kind(model) if model else None
        shipped = {} if kind is not None else shipped_artifacts(model or DEFAULT_MODEL)
        shipped_int8 = kind is None and "onnx" in shipped_artifacts(model or DEFAULT_MODEL, "int8")
        for engine in ENGINES:
            runs = kind.name in engine.runs if kind is not None else bool(shipped.keys() & set(engine.runs))
            # An engine asked for is tried even where it cannot run, so that the table says why.
            if engine.name not in backends if backends else not (runs and engine.installed()):
                continue
            if precisions:
                precs = precisions
            elif kind is not None:  # a model file runs at the precision it records
                precs = [None]
            else:
                precs = [*engine.precisions(), *(["int8"] if shipped_int8 and "onnx" in engine.runs else [])]
            out.extend((model, engine.name, p) for p in precs)
    return out


def bench_latency(models=None, backends=None, precisions=None, sizes=DEFAULT_SIZES, batches=(1,), warmup: int = 5,
                  iters: int | None = None, duration: float | None = None, stream: bool = False,
                  backend_options: dict | None = None, on_progress: Callable[[str], None] | None = None,
                  in_turn: bool = False) -> ResultsTable:
    """Benchmark every combination; combinations that cannot run here become notes. ``in_turn``:
    load them all and time them in turn (``measure_in_turn``) instead of one after the other."""
    table = ResultsTable("hdme latency", LATENCY_COLUMNS, meta=_host_meta())
    progress = on_progress or (lambda _msg: None)
    configs = _configs(models, backends, precisions)
    for group in [configs] if in_turn else [[config] for config in configs]:
        engines = []
        try:
            for model, name, precision in group:
                try:
                    engines.append(create_backend(model, name, precision, **(backend_options or {}).get(name, {})))
                except HdmeError as exc:
                    table.notes.append(f"skipped {name} {precision or ''} {model or 'default model'}: {exc}")
                    continue
                progress(engines[-1].selection)
            if engines:
                _measure_group(table, engines, sizes, batches, warmup, iters, duration, stream, progress)
        finally:
            for engine in engines:
                engine.close()
    if not table.rows:
        raise HdmeError("nothing could be benchmarked: " + "; ".join(table.notes))
    return table


def _measure_group(table: ResultsTable, engines: list, sizes, batches, warmup, iters, duration, stream, progress) -> None:
    for size in sizes:
        for batch in batches:
            progress(f"{', '.join(e.describe() for e in engines)}: {size[0]}x{size[1]} batch {batch}")
            for backend, samples in zip(engines, measure_in_turn(engines, size, batch, warmup, iters, duration)):
                stages = {s: latency_stats(v) for s, v in samples.items()}
                row = {
                    "mode": "inference", "backend": backend.name, "device": backend.device,
                    "model": backend.model_path.name, "precision": backend.precision,
                    "size": f"{size[0]}x{size[1]}", "height": size[0], "width": size[1], "batch": batch,
                    "iters": len(samples["end-to-end"]), "stages": stages,
                    "fps": batch * 1e3 / stages["end-to-end"]["mean"],
                    "unstable": is_unstable(stages["end-to-end"]),
                }
                table.rows.append(row)
                if row["unstable"]:
                    table.notes.append(
                        f"warning: {row['backend']} {row['precision']} {row['size']} B={batch}: coefficient of variation "
                        f"{stages['end-to-end']['cv']:.0%} exceeds {UNSTABLE_CV:.0%}; the machine is busy or throttling, "
                        "so these figures are unstable"
                    )
                if stream and batch == 1:
                    progress(f"{backend.describe()} {size[0]}x{size[1]} streaming")
                    summary = measure_stream(backend, size)
                    table.rows.append({
                        **{k: row[k] for k in ("backend", "device", "model", "precision", "size", "height", "width", "batch")},
                        "mode": "stream", "iters": summary["frames"], "stages": summary["stages"],
                        "fps": summary["fps"], "stream_ratio": summary["fps"] / row["fps"],
                        "unstable": False,
                    })


def plot_latency(table: ResultsTable, path: str | Path) -> None:
    """Median end-to-end latency vs megapixels, one line per backend/precision/model/batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[float, float, float]]] = {}
    for row in table.rows:
        if row["mode"] != "inference":
            continue
        label = f"{row['backend']} {row['precision']} {row['model']} B={row['batch']}"
        e2e = row["stages"]["end-to-end"]
        lines.setdefault(label, []).append((row["height"] * row["width"] / 1e6, e2e["median"], e2e["p90"]))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, points in lines.items():
        mp, med, p90 = (np.array(v) for v in zip(*sorted(points)))
        ax.errorbar(mp, med, yerr=[np.zeros_like(med), p90 - med], marker="o", capsize=3, label=label)
    ax.set_xlabel("input size (megapixels)")
    ax.set_ylabel("end-to-end latency, median (ms; bar to p90)")
    ax.set_title(f"hdme latency on {table.meta.get('host', '')} ({table.meta.get('cpu_count', '?')} CPUs)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
