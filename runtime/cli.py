"""CLI of the runtime stage: ``hdme predict``, ``hdme run``, ``hdme doctor`` and the ``hdme bench`` group.

Only typer, the core and the engine registry are imported here; engines, OpenCV pipelines and
benchmarks are imported inside each command so that ``hdme --help`` stays fast and torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hdme.errors import HdmeError
from hdme.io import check_output_file
from hdme.runtime.backends import BACKEND_NAMES, ENGINES

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks: latency of the inference backends, accuracy on real data, synthesis throughput, reports.",
    no_args_is_help=True,
)

MODEL_HELP = "Shipped model name, .safetensors, .onnx or .engine (default: the shipped hdme-edge)."
BACKEND_HELP = " | ".join(BACKEND_NAMES) + " (auto: the fastest engine installed here, and it says why)."
TTA_HELP = "σ averaged over mirrored views: none (1 pass) | flip (left-right, 2 passes) | flip4 (4 passes)."


def _console(stderr: bool = False):
    from hdme.console import make_console

    return make_console(stderr)


def _backend_options(backend: str, provider: Optional[str], threads: int) -> dict:
    """Keyword arguments of create_backend for the common options."""
    takes_provider = [e.name for e in ENGINES if "provider" in e.options]
    if provider and backend not in ("auto", *takes_provider):
        raise HdmeError(f"--provider applies to the {' and '.join(takes_provider)} backend only")
    return {"threads": threads, **({"provider": provider} if provider else {})}


def _engine_options(provider: Optional[str], threads: int) -> dict[str, dict]:
    """create_backend keyword arguments per engine: --threads for all, --provider where taken."""
    return {e.name: _backend_options(e.name, provider if "provider" in e.options else None, threads) for e in ENGINES}


EXTEND_RANGE_HELP = "Also estimate at 1/2 and 1/4 scale and merge, so blur beyond 10 px reads up to about 40 px (about 1.3× the compute)."
SATURATED_SHARE = 0.01  # of a map's pixels at the top of the range before hdme says so
# JPEG quality below which hdme says that blur may read low: at 25 the shipped model reads 3–10 px
# 7–8 points lower than uncompressed, at 40 3–4 points (model card).
LOW_JPEG_QUALITY = 30


def _warn_saturated(what: str, extend_range: bool) -> None:
    """One yellow line: ``what`` reads at the top of the range, so the blur may be larger than it says."""
    hint = "" if extend_range else " (--extend-range reads up to about 40 px)"
    typer.secho(f"  {what} at the top of the range: the blur there may be larger than it reads{hint}",
                fg=typer.colors.YELLOW, err=True)


def _low_jpeg_message(paths: list[Path]) -> str | None:
    """One line when inputs were saved as JPEG below LOW_JPEG_QUALITY (hdme.jpeg), else None."""
    from hdme.jpeg import jpeg_quality

    low = [q for q in map(jpeg_quality, paths) if q is not None and q < LOW_JPEG_QUALITY]
    if not low:
        return None
    what = f"{len(low)} of {len(paths)} frames saved as JPEG below quality {LOW_JPEG_QUALITY} (down to about {min(low)}): their" \
        if len(paths) > 1 else f"saved as JPEG at quality about {low[0]}: its"
    return f"{what} 8×8 blocks pass for sharp edges, so blur over about 3 px may read low"


def _warn_low_jpeg(paths: list[Path]) -> None:
    message = _low_jpeg_message(paths)
    if message:
        typer.secho(f"  {message}", fg=typer.colors.YELLOW, err=True)  # indented under its input's line


def predict_command(
    inputs: List[str] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(..., "--out", help="Output folder for NAME.npy and NAME.png."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    method: str = typer.Option("hdme", "--method", help="hdme (the network) | zhuo-sim (classic edge-based baseline)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | fp16 | bf16 | int8 (default: the model file's)."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Downscale images whose longer side exceeds N px."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Process images larger than N px in overlapping N px tiles."),
    tta: Optional[str] = typer.Option(None, "--tta", help=TTA_HELP + " Default: flip."),
    extend_range: bool = typer.Option(False, "--extend-range", help=EXTEND_RANGE_HELP),
    formats: List[str] = typer.Option(["npy", "png"], "--format", help="npy (σ px, float32) and/or png (picture); repeatable."),
    scale_max: float = typer.Option(10.0, "--scale-max", help="The PNG picture's colour scale runs from 0 to this σ, px."),
    provider: Optional[str] = typer.Option(None, "--provider", help="ONNX Runtime provider: cpu | cuda | tensorrt."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for inference (0: the engine's default)."),
) -> None:
    """σ maps (Gaussian PSF sigma, px) of images: DIR/NAME.npy and DIR/NAME.png side by side."""
    from rich.table import Table
    from rich.text import Text

    from hdme.images import size_text
    from hdme.runtime.predict import DefocusPredictor, predict_files

    console = _console()
    if not scale_max > 0:
        raise HdmeError("--scale-max must be positive")
    if method == "zhuo-sim":
        from hdme.runtime.classic import ZhuoSimPredictor

        predictor = ZhuoSimPredictor(max_side=max_side)
        typer.echo("method: zhuo-sim (edge-based, no network)")
    elif method == "hdme":
        predictor = DefocusPredictor(model, backend, max_side=max_side, tile=tile, precision=precision, tta=tta,
                                     extend_range=extend_range, **_backend_options(backend, provider, threads))
        typer.echo(f"backend {predictor.backend.selection}")
    else:
        raise HdmeError(f"unknown method '{method}' (choose hdme or zhuo-sim)")

    def report(result) -> None:
        if result.ok:
            typer.echo(f"{result.source}: {result.message}, {result.ms:.0f} ms")
            if result.saturated >= SATURATED_SHARE:
                _warn_saturated(f"{result.saturated:.0%} of pixels", extend_range)
            _warn_low_jpeg([result.source])
        else:
            typer.secho(f"failed {result.message}", fg=typer.colors.RED, err=True)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # Tiles of one huge photo take a minute on a CPU: show them; whole images go by too fast to.
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task("", visible=False)

        def on_tiles(path, done, total) -> None:
            progress.update(task, description=f"{path.name}: tiles", completed=done, total=total, visible=total > 1)

        def report_line(result) -> None:
            progress.update(task, visible=False)
            report(result)

        results = predict_files(predictor, inputs, out, formats, on_result=report_line, vmax=scale_max,
                                on_progress=on_tiles if method == "hdme" else None)
    table = Table(title=f"hdme predict → {out}")
    for header in ("input", "H×W", "σ mean px", "σ max px", "ms", "status"):
        table.add_column(header, justify="right" if header in ("σ mean px", "σ max px", "ms") else "left")
    for r in results:
        if r.ok:
            table.add_row(r.source.name, size_text(*r.size), f"{r.sigma_mean:.2f}", f"{r.sigma_max:.2f}", f"{r.ms:.0f}", "ok")
        else:
            table.add_row(r.source.name, "–", "–", "–", "–", Text("failed", style="red"))
    console.print(table)
    failed = sum(not r.ok for r in results)
    typer.echo(f"{len(results) - failed} of {len(results)} images done" + (f", {failed} failed" if failed else ""))
    if failed:
        from hdme.images import VIDEO_EXTS

        videos = [r.source for r in results if not r.ok and r.source.suffix.lower() in VIDEO_EXTS]
        if videos:
            typer.echo(f"videos stream through `hdme run`, e.g. hdme run {videos[0]}", err=True)
        raise typer.Exit(1)


def run_command(
    source: str = typer.Argument(..., help="Camera index (0), video file, rtsp:// or http:// URL, GStreamer pipeline, image folder or image."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    engine: Optional[Path] = typer.Option(None, "--engine", help="A TensorRT engine (same as --model FILE.engine)."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | fp16 | bf16 | int8 (default: the model file's)."),
    size: Optional[str] = typer.Option(None, "--size", help="Run the model at HxW (e.g. 480x640); σ is mapped back to frame px."),
    tta: str = typer.Option("none", "--tta", help=TTA_HELP),
    temporal_filter: bool = typer.Option(False, "--temporal-filter", help="Steady σ over time: static regions are averaged over frames, moving ones, cuts and focus changes follow at once."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="Stop after N frames."),
    display: bool = typer.Option(False, "--display", help="Show frame | colour map (0–10 px) | scale bar, with FPS."),
    save_video: Optional[Path] = typer.Option(None, "--save-video", help="Write the side-by-side view to a video (.mp4, .avi…)."),
    save_maps: Optional[Path] = typer.Option(None, "--save-maps", help="Write each σ map into this folder."),
    map_format: str = typer.Option("png", "--map-format", help="png (16-bit, value = 1000·σ) | npy (float32 σ px)."),
    provider: Optional[str] = typer.Option(None, "--provider", help="ONNX Runtime provider: cpu | cuda | tensorrt."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for inference (0: the engine's default)."),
    serve: Optional[str] = typer.Option(None, "--serve", metavar="[HOST:]PORT", help="Serve a live page (frame, σ map, FPS, latency, σ at clicked points) at http://HOST:PORT/; HOST defaults to 127.0.0.1, this machine only."),
    serve_fps: float = typer.Option(10.0, "--serve-fps", help="Most pictures a second sent to the page's viewers."),
) -> None:
    """Stream frames through the model to live σ maps; prints FPS and per-stage latency at the end."""
    from hdme.runtime.backends import create_backend
    from hdme.runtime.pipeline import StreamPipeline, parse_size
    from hdme.runtime.predict import check_tta
    from hdme.runtime.sinks import DisplaySink, MapSink, VideoSink
    from hdme.runtime.sources import ImageListSource, classify_source, open_source
    from hdme.runtime.temporal import TemporalFilter

    if engine is not None:
        if model is not None:
            raise HdmeError("give either --model or --engine, not both")
        model = str(engine)
    console = _console()
    work_size, tta = parse_size(size), check_tta(tta)
    classify_source(source)  # a mistyped path fails at once, not after the engine has loaded
    engine_ = create_backend(model, backend, precision, **_backend_options(backend, provider, threads))
    typer.echo(f"backend {engine_.selection}")
    sinks, server = [], None

    def on_message(message: str) -> None:
        typer.secho(message, fg=typer.colors.YELLOW, err=True)
        if server is not None:
            server.view.note_source_message(message)

    sinks_opened_here = True  # until the pipeline runs: it closes every sink itself, also when it fails
    try:
        if serve is not None:
            from hdme.runtime.live import LiveServer, LiveView, parse_address

            server = LiveServer(LiveView(engine_, max_fps=serve_fps), *parse_address(serve))
            sinks.append(server.view)
            typer.echo(f"live view: {server.url}")
        src = open_source(source, on_message=on_message)
        typer.echo(f"source {src.description} ({'live: latest frame only' if src.live else 'every frame, in order'})")
        jpeg_message = _low_jpeg_message(src.paths) if isinstance(src, ImageListSource) else None
        if jpeg_message:
            on_message(jpeg_message)
        if display:
            sinks.append(DisplaySink())
        if save_video is not None:
            sinks.append(VideoSink(save_video, fps=src.fps or 25.0))
        if save_maps is not None:
            sinks.append(MapSink(save_maps, map_format))
        pipeline = StreamPipeline(src, engine_, sinks, size=work_size, max_frames=max_frames, tta=tta,
                                  temporal=TemporalFilter() if temporal_filter else None)
        if server is not None:
            server.view.attach(pipeline)
        sinks_opened_here = False
        stats = pipeline.run()
    except BaseException:
        if sinks_opened_here:  # a failure before the pipeline started still finalises what was opened
            for sink in sinks:
                sink.close()
        if server is not None:
            server.close()
        raise
    finally:
        engine_.close()
    if stats.frames == 0 and not stats.interrupted:
        if server is not None:
            server.close()
        unreadable = f" ({stats.corrupt} unreadable)" if stats.corrupt else ""
        raise HdmeError(f"{src.description}: no frame could be read{unreadable}")
    _print_run_summary(console, stats)
    if save_video is not None and stats.frames:
        typer.echo(f"video: {save_video}")
    if server is not None:
        # Only a source that ran out keeps its last frame on the page; Ctrl-C, q in the window and
        # --max-frames end the run.
        ended = not (stats.interrupted or stats.stopped_by_sink or (max_frames is not None and stats.frames >= max_frames))
        if ended:
            typer.echo(f"the source ended; still serving its last frame at {server.url} (Ctrl-C stops)")
            server.wait_for_interrupt()
        server.close()
    if stats.interrupted:
        raise typer.Exit(130)


def _print_run_summary(console, stats) -> None:
    from rich.table import Table

    from hdme.runtime.pipeline import STATS_WINDOW

    summary = stats.summary()
    typer.echo(
        f"{summary['frames']} frames in {summary['seconds']:.2f} s: {summary['fps']:.1f} FPS, "
        f"{summary['dropped']} dropped, {summary['corrupt']} corrupt" + (" (interrupted)" if summary["interrupted"] else "")
    )
    window = f", last {STATS_WINDOW} frames" if summary["frames"] > STATS_WINDOW else ""
    table = Table(title=f"per-stage latency (ms{window})")
    for header in ("stage", "mean", "median", "p90", "p95", "p99", "max"):
        table.add_column(header, justify="left" if header == "stage" else "right")
    for stage, s in summary["stages"].items():
        table.add_row(stage, *(f"{s[k]:.2f}" for k in ("mean", "median", "p90", "p95", "p99", "max")))
    console.print(table)


@bench_app.command("latency")
def bench_latency_command(
    models: Optional[List[str]] = typer.Option(None, "--model", help=MODEL_HELP + " Repeatable."),
    backends: Optional[List[str]] = typer.Option(None, "--backend", help=" | ".join(BACKEND_NAMES[1:]) + "; repeatable (default: all installed)."),
    precisions: Optional[List[str]] = typer.Option(None, "--precision", help="fp32 | fp16 | bf16 | int8; repeatable."),
    sizes: Optional[List[str]] = typer.Option(None, "--size", help="HxW; repeatable (default 256x256, 480x640, 720x1280)."),
    batches: List[int] = typer.Option([1], "--batch", help="Batch size; repeatable."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs first."),
    iters: Optional[int] = typer.Option(None, "--iters", help="Timed runs per configuration."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds of timed runs per configuration (default 3)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write the results as a Markdown table."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="PNG plot of latency vs resolution."),
    stream: bool = typer.Option(False, "--stream", help="Also measure the streaming pipeline's FPS on a generated video."),
    in_turn: bool = typer.Option(False, "--in-turn", help="Load every configuration and time them in turn, one run each, round after round: ratios that hold on a machine whose load changes."),
    provider: Optional[str] = typer.Option(None, "--provider", help="ONNX Runtime provider: cpu | cuda | tensorrt."),
    threads: int = typer.Option(0, "--threads", help="CPU threads for inference (0: the engine's default)."),
) -> None:
    """Latency per stage and end to end (mean, median, p90/p95/p99, std, CV, FPS), trtexec-style."""
    from hdme.runtime.bench import DEFAULT_SIZES, LATENCY_SCREEN_COLUMNS, bench_latency, plot_latency
    from hdme.runtime.pipeline import parse_size

    if iters is not None and duration is not None:
        raise HdmeError("give --iters or --duration, not both")
    if (iters is not None and iters < 1) or warmup < 0 or any(b < 1 for b in batches):
        raise HdmeError("--iters and --batch must be at least 1, --warmup at least 0")
    for path in (json_path, markdown_path, plot_path):
        if path:
            check_output_file(path)
    console = _console()
    table = bench_latency(
        models=models or None, backends=backends or None, precisions=precisions or None,
        sizes=[parse_size(s) for s in sizes] if sizes else DEFAULT_SIZES, batches=batches,
        warmup=warmup, iters=iters, duration=duration, stream=stream, in_turn=in_turn,
        backend_options=_engine_options(provider, threads),
        on_progress=lambda m: typer.secho(m, dim=True, err=True),
    )
    console.print(table.to_rich(LATENCY_SCREEN_COLUMNS))
    for note in table.notes:
        typer.secho(note, fg=typer.colors.YELLOW)
    if json_path:
        table.write_json(json_path)
        typer.echo(f"json: {json_path}")
    if markdown_path:
        table.write_markdown(markdown_path)
        typer.echo(f"markdown: {markdown_path}")
    if plot_path:
        plot_latency(table, plot_path)
        typer.echo(f"plot: {plot_path}")


@bench_app.command("accuracy")
def bench_accuracy_command(
    datasets: Optional[List[str]] = typer.Option(None, "--dataset", help="synthetic, away-leaves, away-dof, away-large (rendered from fixed seeds; options ,size=N ,seed=N ,recipe=R) | rtf | cuhk | dut | DIR, each with an optional :N limit; repeatable (default: synthetic and every real set found)."),
    models: Optional[List[str]] = typer.Option(None, "--model", help=MODEL_HELP + " Repeatable; precision is read from the model's own metadata."),
    engines: Optional[List[Path]] = typer.Option(None, "--engine", help="TensorRT engines; repeatable (same as --model FILE.engine)."),
    backends: Optional[List[str]] = typer.Option(None, "--backend", help=BACKEND_HELP + " Repeatable."),
    methods: Optional[List[str]] = typer.Option(None, "--method", help="hdme | zhuo-sim; repeatable (default: both)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results, per image included, as JSON."),
    markdown_path: Optional[Path] = typer.Option(None, "--markdown", help="Write the table as Markdown."),
    max_side: Optional[int] = typer.Option(None, "--max-side", help="Downscale images whose longer side exceeds N px."),
    ttas: Optional[List[str]] = typer.Option(None, "--tta", help=TTA_HELP + " Repeatable (default: flip, as hdme predict)."),
    precisions: Optional[List[str]] = typer.Option(None, "--precision", help="fp32 | fp16 | bf16 | int8; repeatable (default: each model's own)."),
    extend_range: bool = typer.Option(False, "--extend-range", help="Evaluate the hdme rows as hdme predict --extend-range does (1/2 and 1/4 scale merged in)."),
) -> None:
    """Accuracy of models × backends × precisions and the Zhuo–Sim baseline, in one table."""
    from hdme.runtime.accuracy import bench_accuracy

    bench_accuracy(datasets or [], [*(models or []), *map(str, engines or [])], backends or [], methods or [],
                   json_path, markdown_path, max_side, ttas or [], precisions or [], extend_range)


SYNTH_COLUMNS = [
    ("device", "device"), ("size", "size"), ("workers", "workers"), ("batch", "chunk"),
    ("draw_ms", "draw ms/sample (1 core)"), ("render_ms", "render ms/sample"), ("degrade_ms", "degrade ms/sample"),
    ("draw_per_core_per_s", "drawn/s per core"), ("device_per_s", "rendered/s on device"), ("fresh_per_s", "fresh samples/s"),
]


@bench_app.command("synth")
def bench_synth_command(
    recipe: str = typer.Option("hdme", "--recipe", help="Synthesis recipe: a name or a JSON file."),
    devices: Optional[List[str]] = typer.Option(None, "--device", help="Device that renders: cpu, cuda, cuda:1 …; repeatable (default cpu)."),
    sizes: Optional[List[int]] = typer.Option(None, "--size", help="Sample side, px; repeatable (default 256)."),
    workers: Optional[List[int]] = typer.Option(None, "--workers", help="Processes drawing scenes ahead (0: in this process); repeatable (default 0)."),
    batch: int = typer.Option(32, "--batch", help="Samples per rendered chunk."),
    chunks: int = typer.Option(4, "--chunks", help="Timed chunks per measurement; with drawing processes, several times their number."),
    source: str = typer.Option("bundled", "--source", help="Photos: bundled, a folder, or coco:DIR."),
    threads: int = typer.Option(0, "--threads", help="torch threads of this process (0: torch's default)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the rows and the host as JSON."),
) -> None:
    """Fresh samples/s of the synthetic training stream, split into drawing, rendering and degradation."""
    import torch

    from hdme.io import write_json
    from hdme.runtime.bench import ResultsTable
    from hdme.train.make import open_source
    from hdme.train.synth import get_recipe
    from hdme.train.synth_bench import bench_synth, check_devices

    sizes, workers = sizes or [256], workers or [0]
    if batch < 1 or chunks < 1 or threads < 0 or any(s < 16 for s in sizes) or any(w < 0 for w in workers):
        raise HdmeError("--batch and --chunks must be at least 1, --size at least 16, --workers and --threads at least 0")
    if threads:
        torch.set_num_threads(threads)
    names = check_devices(devices or ["cpu"])
    rows, meta = bench_synth(get_recipe(recipe), names, sizes, workers, batch, chunks, open_source(source),
                             on_progress=lambda m: typer.secho(m, dim=True, err=True))
    table = ResultsTable("hdme synthesis throughput", SYNTH_COLUMNS, rows=rows, meta=meta, notes=[
        "draw: CPU time of one core per sample; render (shuffle + Eq. 4) and degrade (noise, Bayer, JPEG): "
        "CPU time on the CPU, synchronised wall time on an accelerator; fresh samples/s: the training stream, wall clock.",
    ])
    _console().print(table.to_rich())
    for note in table.notes:
        typer.secho(note, dim=True)
    if json_path:
        write_json(json_path, table.to_dict())
        typer.echo(f"json: {json_path}")


@bench_app.command("report")
def bench_report_command(
    results: List[Path] = typer.Argument(..., help="Results of hdme bench accuracy --json and/or hdme bench latency --json."),
    out: Path = typer.Option(..., "--out", help="Folder for report.md and its PNG figures."),
) -> None:
    """Markdown report with figures: predicted vs true σ per bin, RTF row profiles, map grids, latency vs resolution."""
    from hdme.runtime.report import build_report

    _console().print(f"report: {build_report(results, out)}")


def focus_sweep_command(
    frames: List[str] = typer.Argument(..., help="Frames of the sweep in order: image files or folders."),
    points: Optional[str] = typer.Option(None, "--points", help='Points "x,y;x,y" (σ = median of a 5×5 window).'),
    regions: Optional[str] = typer.Option(None, "--regions", help='Regions "x,y,w,h;…" (σ = median over the region).'),
    method: str = typer.Option("auto", "--method", help="auto (the model, else zhuo-sim) | hdme | zhuo-sim."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG plot of σ per frame."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the curves and focus positions as JSON."),
    extend_range: bool = typer.Option(False, "--extend-range", help=EXTEND_RANGE_HELP),
) -> None:
    """Autofocus from a focus sweep: the frame (and sub-frame position) of minimum σ per point."""
    from hdme.runtime.focus import run_focus_sweep

    result = run_focus_sweep(frames, points, regions, method, model, backend, plot, json_path, extend_range)
    # Gaps (unreadable frames) are not frames of the sweep.
    gaps = set(result["gaps"])
    read = [Path(f) for k, f in enumerate(result["frames"]) if k not in gaps]
    for t in result["targets"]:
        if t["saturated_frames"]:
            _warn_saturated(f"σ at {t['target']} reads in {t['saturated_frames']} of {len(read)} frames", extend_range)
    _warn_low_jpeg(read)


def depth_command(
    source: Path = typer.Argument(..., help="An image, or a σ map (.npy, 16-bit .png)."),
    focal_mm: float = typer.Option(..., "--focal-mm", help="Focal length, mm."),
    f_number: float = typer.Option(..., "--f-number", help="Aperture f-number N."),
    pixel_um: float = typer.Option(..., "--pixel-um", help="Pixel pitch of the image, µm."),
    focus_m: float = typer.Option(..., "--focus-m", help="Distance the lens is focused at, m."),
    points: Optional[str] = typer.Option(None, "--points", help='Also report points "x,y;x,y".'),
    method: str = typer.Option("auto", "--method", help="For images: auto | hdme | zhuo-sim."),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="Write near_m, far_m and sigma_px maps to FILE.npz."),
    extend_range: bool = typer.Option(False, "--extend-range", help="For images: " + EXTEND_RANGE_HELP),
) -> None:
    """Thin-lens distance from σ (paper Eq. 2): both the near and the far solution."""
    from hdme.runtime.focus import Lens, run_depth

    result = run_depth(source, Lens(focal_mm, f_number, pixel_um, focus_m), method, model, backend, points, out, extend_range)
    if result["saturated"] is not None and result["saturated"] >= SATURATED_SHARE:
        _warn_saturated(f"{result['saturated']:.0%} of pixels", extend_range)
    _warn_low_jpeg([source])


def doctor_command() -> None:
    """What this machine can run: each engine, its version and precisions, the NVIDIA driver and CUDA, a fix per mismatch."""
    from rich.table import Table

    from hdme.runtime.doctor import diagnose

    findings = diagnose()
    table = Table("component", "version", "runs here", "fix")
    for finding in findings:
        table.add_row(finding.name, finding.version, finding.runs or "-", finding.fix or "")
    console = _console()
    console.print(table)
    problems = sum(1 for f in findings if f.fix)
    console.print(f"{problems} to fix" if problems else "nothing to fix")


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
    app.command("predict")(predict_command)
    app.command("run")(run_command)
    app.add_typer(bench_app, name="bench")
    app.command("focus-sweep")(focus_sweep_command)
    app.command("depth")(depth_command)
