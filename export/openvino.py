"""FP32 hdme ONNX → OpenVINO IR (``NAME.xml`` + ``NAME.bin``) at fp32, fp16 (weights stored in
float16, computed at the device's precision) or INT8 (the CPU layout of ``hdme export quantize``,
calibrated on calib_data/), with the ONNX's metadata and the IR's precision in the ``hdme`` section
of its ``rt_info`` (hdme.contract).

INT8 is one calibration for both CPU engines: the Q/DQ graph that ONNX Runtime runs, read into the
IR. NNCF's post-training quantisation of the same model (min/max ranges on the same images) ran as
fast but cost 0.0031–0.0034 MAE (σ/10) on the sets away from the training mix, where the Q/DQ graph
costs 0.0002 or less, and its mixed preset or a float head did not close the gap (model card)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from hdme.contract import INPUT_NAME, IR_RT_INFO_SECTION, METADATA_KEYS, model_precision, onnx_metadata
from hdme.errors import HdmeError, require
from hdme.io import make_folder
from hdme.metrics import error_stats

IR_PRECISIONS = ("fp32", "fp16", "int8")
CHECK_IMAGES = 8  # calibration images the IR is compared with its source on


def default_output(src: str | os.PathLike, precision: str, folder: str | os.PathLike) -> Path:
    """model.onnx → FOLDER/model.openvino.xml, model.fp16.openvino.xml, model.int8.openvino.xml."""
    return Path(folder) / f"{Path(src).stem}{'' if precision == 'fp32' else '.' + precision}.openvino.xml"


def source_onnx(model: str) -> Path:
    """The FP32 ONNX a model argument names: an .onnx file or a shipped model's export."""
    from hdme.weights import is_file_argument, shipped_onnx

    if not is_file_argument(model):
        path = shipped_onnx(model)
    elif (path := Path(model)).suffix.lower() != ".onnx":
        raise HdmeError(f"{path}: expected an FP32 .onnx file or a shipped model name")
    if model_precision(path) != "fp32":
        raise HdmeError(f"{path}: already {model_precision(path)}; convert the FP32 export instead")
    return path


def _save_ir(model, out: Path, compress_to_fp16: bool) -> None:
    """Write the IR so that ``out`` (the .xml readers open) appears only with its weights in place."""
    ov = require("openvino", "openvino")
    make_folder(out.parent)
    with tempfile.TemporaryDirectory(prefix=f".{out.stem}.", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(staged, out)


def export_openvino(
    src: str | os.PathLike,
    out: str | os.PathLike,
    precision: str = "fp32",
    calib=None,
    progress=None,
) -> dict[str, float]:
    """Convert the FP32 ONNX ``src`` into an IR at ``out``; ``calib`` (a CalibrationSet) for int8,
    ``progress`` called once per calibration image.
    Returns the error statistics (σ px) of the IR against ``src`` on the first calibration images
    (on seeded noise when there are none)."""
    ov = require("openvino", "openvino")
    src, out = Path(src), Path(out)
    if precision not in IR_PRECISIONS:
        raise HdmeError(f"precision '{precision}': an OpenVINO IR is one of {', '.join(IR_PRECISIONS)}")
    if out.suffix.lower() != ".xml":
        raise HdmeError(f"{out}: an OpenVINO IR is written as NAME.xml (with NAME.bin beside it)")
    if precision == "int8" and calib is None:
        raise HdmeError("INT8 needs calibration images")
    # The IR is saved while the graph it is read from still exists: OpenVINO may map its weights.
    with tempfile.TemporaryDirectory(prefix=".hdme-int8.") as tmp:
        if precision == "int8":
            from hdme.export.quantize import quantize_int8

            graph = Path(tmp) / f"{src.stem}.int8-cpu.onnx"
            quantize_int8(src, graph, calib, target="cpu", progress=progress)
        else:
            graph = src
        metadata = {k: v for k, v in onnx_metadata(graph).items() if k in METADATA_KEYS}
        model = ov.Core().read_model(str(graph))
        if precision != "fp32":  # FP32 exports record no precision (hdme.contract)
            metadata["precision"] = precision
        for key, value in metadata.items():
            model.set_rt_info(value, [IR_RT_INFO_SECTION, key])
        _save_ir(model, out, compress_to_fp16=precision == "fp16")
    return compare_with_source(src, out, calib)


def compare_with_source(src: Path, ir: Path, calib=None) -> dict[str, float]:
    """Per-pixel error of the IR against its source ONNX, both at fp32 arithmetic, in σ px."""
    core = require("openvino", "openvino").Core()
    if calib is not None:
        inputs = np.stack([calib.load(i) for i in range(min(CHECK_IMAGES, len(calib)))])
    else:
        inputs = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    outs = []
    for path in (src, ir):
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outs.append(np.concatenate([compiled({INPUT_NAME: x[None]})[0] for x in inputs]))
    return error_stats(outs[1], outs[0])
