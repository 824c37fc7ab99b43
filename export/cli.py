"""CLI of the export stage: ``hdme export onnx|quantize|trt|openvino|triton|check``.

Only typer and the core are imported here; torch, onnx and TensorRT inside each command."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from hdme.console import make_console
from hdme.export.tensorrt import DEFAULT_SHAPES
from hdme.weights import DEFAULT_MODEL

export_app = typer.Typer(
    name="export",
    help="Export: ONNX, FP16/INT8 quantisation, TensorRT engines, OpenVINO IR, Triton repositories, output comparison.",
    no_args_is_help=True,
)


@export_app.command("onnx")
def onnx_command(
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Shipped model name or .safetensors weights."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    dynamic: bool = typer.Option(True, "--dynamic/--static", help="Dynamic batch, height and width (default) or fixed."),
    size: Optional[str] = typer.Option(None, "--size", help="HxW of a static export (multiples of the network's multiple)."),
    batch: int = typer.Option(1, "--batch", help="Batch size of a static export."),
    untrained: bool = typer.Option(False, "--untrained", help="Export a randomly initialised architecture by name (for latency tests)."),
) -> None:
    """PyTorch → ONNX (input 'image' [N,3,H,W] RGB 0..1, output 'sigma' [N,1,H,W] σ/10), checked,
    simplified and compared with PyTorch; nothing is written when the parity check fails."""
    from hdme.contract import parse_size
    from hdme.export.onnx import export_onnx

    result = export_onnx(model, out, opset=opset, dynamic=dynamic, size=parse_size(size) if size else None, batch=batch, untrained=untrained)
    typer.echo(f"wrote {result.path}")


@export_app.command("quantize")
def quantize_command(
    onnx_file: Path = typer.Argument(..., help="FP32 .onnx written by 'hdme export onnx'."),
    precision: str = typer.Option(..., "--precision", help="fp16 or int8."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Folder of calibration images for INT8 (default: calib_data/ of the source tree)."),
    method: Optional[str] = typer.Option(None, "--method", help="INT8 calibration: max, entropy or percentile (default: percentile for --target tensorrt, max for cpu)."),
    backend: str = typer.Option("auto", "--backend", help="auto (ModelOpt when installed), modelopt or ort."),
    target: str = typer.Option("tensorrt", "--target", help="INT8 layout: tensorrt (symmetric Q/DQ) or cpu (U8S8 for ONNX Runtime)."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", help="Use the first N calibration images."),
    exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Node name to keep in float (repeatable)."),
    keep_head: Optional[bool] = typer.Option(None, "--keep-head/--quantize-head", help="Keep the upsampling head in float (default: for --target tensorrt only)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default NAME.fp16.onnx, NAME.int8.onnx, NAME.int8-cpu.onnx)."),
    eval_set: str = typer.Option("synthetic", "--eval", help="Held-out set: a folder of images with σ maps, or a --dataset spec of hdme bench accuracy (default: synthetic, needs torch)."),
    eval_count: int = typer.Option(16, "--eval-count", help="Held-out images (when --eval has no :N of its own)."),
) -> None:
    """FP16 or INT8 variant of an FP32 ONNX, with an accuracy table against FP32 (also written as JSON beside it)."""
    from hdme.errors import HdmeError
    from hdme.export import quantize as q

    if precision not in q.PRECISIONS:
        raise HdmeError(f"precision '{precision}': expected one of {', '.join(q.PRECISIONS)}")
    if backend not in q.BACKENDS:
        raise HdmeError(f"backend '{backend}': expected one of {', '.join(q.BACKENDS)}")
    if target not in q.TARGETS:
        raise HdmeError(f"target '{target}': expected one of {', '.join(q.TARGETS)}")
    from hdme.export.evaluate import heldout_set, with_count

    q.require_fp32(onnx_file)
    out = out or q.default_output(onnx_file, precision, target)
    if out.resolve() == onnx_file.resolve():
        raise HdmeError(f"{out}: the output would overwrite the input")
    # checked before the slow held-out set is made
    calib_set = _calibration_set(calib, calib_count, required=True) if precision == "int8" else None
    heldout = heldout_set(with_count(eval_set, eval_count))  # before writing anything: it may be unavailable
    if precision == "fp16":
        used = q.convert_fp16(onnx_file, out, backend=backend, exclude=exclude)
        settings = {"precision": "fp16", "backend": used}
    else:
        method = q.calibration_method(method, target, backend)
        with _calibration_progress(calib_set) as advance:
            used = q.quantize_int8(
                onnx_file, out, calib_set, method=method, target=target, backend=backend,
                exclude=exclude, keep_head=keep_head, progress=advance,
            )
        settings = {"precision": "int8", "target": target, "method": method, "backend": used,
                    # the default set is named as the source tree names it, so the record reads the same on every machine
                    "calib": str(calib) if calib is not None else calib_set.folder.name, "calib_images": len(calib_set), "calib_sha256": calib_set.sha256}
    typer.echo(f"wrote {out} ({used})")
    _report_accuracy(onnx_file, out, settings, heldout)


def _calibration_set(calib: Optional[Path], count: Optional[int], required: bool):
    """The images of --calib, else calib_data/ of the source tree; None where neither is given or
    there and none is required."""
    from hdme.errors import HdmeError
    from hdme.export.calibration import CalibrationSet, default_calibration_folder

    if calib is None:
        try:
            calib = default_calibration_folder()
        except HdmeError as exc:
            if not required:
                return None
            raise HdmeError(f"{exc}; pass --calib DIR") from None
    return CalibrationSet(calib, count=count)


@contextmanager
def _calibration_progress(calib_set):
    """A progress bar over ``calib_set`` (none when it is None); yields the per-image callback."""
    if calib_set is None:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=make_console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"calibrating on {len(calib_set)} images", total=len(calib_set))
        yield lambda: progress.advance(task)


def _report_accuracy(reference: Path, candidate: Path, settings: dict, heldout) -> None:
    from hdme.export.evaluate import accuracy_table, describe, print_accuracy_table
    from hdme.io import write_json

    label = settings["precision"] + (f"-{settings['target']}" if settings.get("target") == "cpu" else "")
    rows = accuracy_table(reference, {label: candidate}, heldout)
    print_accuracy_table(rows, heldout)
    report = candidate.with_suffix(".json")
    write_json(report, {"reference": reference.name, "model": candidate.name, **settings, "heldout": describe(heldout), "rows": rows})
    typer.echo(f"wrote {report}")


@export_app.command("trt")
def trt_command(
    onnx_file: Path = typer.Argument(..., help="ONNX to build (FP32, FP16 or Q/DQ INT8)."),
    out: Path = typer.Option(..., "--out", help="Output .engine file (a .engine.json sidecar is written beside it)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16 or int8 (default: that of the ONNX)."),
    shapes: str = typer.Option(DEFAULT_SHAPES, "--shapes", help="Optimisation profile min:opt:max (NxCxHxW); sides are multiples of the network's multiple (32 for the shipped models), to which the runtime pads frames: 720p runs at 736x1280."),
    workspace: float = typer.Option(2.0, "--workspace", help="Builder workspace in GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file, read if present and updated."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images for INT8 from an FP32 ONNX (TensorRT 10; default: calib_data/ of the source tree)."),
    calib_cache: Optional[Path] = typer.Option(None, "--calib-cache", help="Calibration cache file (default: ENGINE.calib)."),
) -> None:
    """Build a TensorRT engine (TensorRT ≥ 10, NVIDIA GPU)."""
    from hdme.export.tensorrt import build_engine

    info = build_engine(onnx_file, out, precision, shapes, workspace, timing_cache, calib, calib_cache)
    typer.echo(f"wrote {out} ({info['precision']}, TensorRT {info['tensorrt_version']}, {info['gpu_name']})")


@export_app.command("openvino")
def openvino_command(
    model: str = typer.Argument(DEFAULT_MODEL, help="FP32 .onnx file or shipped model name."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 (weights stored in float16) | int8 (the CPU Q/DQ layout of export quantize, calibrated on --calib)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output .xml, .bin beside it (default NAME[.PRECISION].openvino.xml beside the ONNX; here for a shipped model)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Folder of calibration images for INT8, and for the comparison with the ONNX (default: calib_data/ of the source tree; seeded noise where there is none)."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", help="Use the first N calibration images."),
) -> None:
    """ONNX → OpenVINO IR for x86 CPUs, its precision and the ONNX's metadata in the IR's rt_info;
    prints its difference from the ONNX in σ px."""
    from hdme.export.openvino import CHECK_IMAGES, default_output, export_openvino, source_onnx
    from hdme.metrics import ERROR_STATS

    src = source_onnx(model)
    out = out or default_output(src, precision, src.parent if Path(model).suffix else Path.cwd())
    calib_set = _calibration_set(calib, calib_count, required=precision == "int8")
    with _calibration_progress(calib_set if precision == "int8" else None) as advance:
        stats = export_openvino(src, out, precision, calib_set, progress=advance)
    typer.echo(f"wrote {out} and {out.with_suffix('.bin').name} ({precision})")
    on = f"{min(CHECK_IMAGES, len(calib_set))} calibration images" if calib_set is not None else "seeded noise"
    typer.echo(f"against {src.name} on {on}: " + "  ".join(f"{k} {stats[k]:.4f} px" for k in ERROR_STATS))


@export_app.command("triton")
def triton_command(
    model: str = typer.Option(..., "--model", help=".onnx or .engine file, or a shipped model name (its FP32 ONNX)."),
    repo: Path = typer.Option(..., "--repo", help="Triton model repository folder."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository (default: file name stem)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest batch the server forms (default: 8, or the engine profile's largest batch if smaller; 0: no batching)."),
    instances: int = typer.Option(1, "--instances", help="Model instances."),
) -> None:
    """Write a Triton Inference Server model repository entry (config.pbtxt + version 1)."""
    from hdme.export.triton import write_repository

    typer.echo(f"wrote {write_repository(model, repo, name, max_batch, instances)}")


@export_app.command("check")
def check_command(
    model_a: str = typer.Argument(..., help="Reference model: name, .safetensors, .onnx or .engine."),
    model_b: str = typer.Argument(..., help="Model to compare with it."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of input images (default: seeded random inputs)."),
    size: str = typer.Option("256x256", "--size", help="HxW the inputs are cropped to."),
    count: int = typer.Option(8, "--count", help="Number of inputs."),
    atol: float = typer.Option(0.01, "--atol", help="Largest allowed per-pixel difference in σ px."),
) -> None:
    """Compare two models' outputs per pixel in σ px (mean, median, p90, p99, max); exit 1 above --atol."""
    from hdme.contract import parse_size
    from hdme.metrics import ERROR_STATS
    from hdme.runtime.compare import compare_models

    result = compare_models(model_a, model_b, images, parse_size(size), count)
    typer.echo(f"A: {result['a']}\nB: {result['b']}\n{result['inputs']} inputs of {result['size']}")
    typer.echo("  ".join(f"{k} {result[k]:.5f} px" for k in ERROR_STATS))
    if result["max"] > atol:
        typer.secho(f"FAIL: max difference {result['max']:.5f} px > atol {atol} px", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"PASS: max difference ≤ {atol} px")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
