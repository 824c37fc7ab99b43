"""FP32 hdme ONNX → OpenVINO IR (``NAME.xml`` + ``NAME.bin``) at fp32, fp16 (weights stored in
float16, computed at the device's precision) or INT8 (NNCF post-training quantisation calibrated
on calib_data/), with the ONNX's metadata and the IR's precision in the ``hdme`` section of its
``rt_info`` (hdme.contract)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from hdme.contract import INPUT_NAME, IR_RT_INFO_SECTION, model_precision, onnx_metadata
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
) -> dict[str, float]:
    """Convert the FP32 ONNX ``src`` into an IR at ``out``; ``calib`` (a CalibrationSet) for int8.
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
    metadata = onnx_metadata(src)
    model = ov.Core().read_model(str(src))
    if precision == "int8":
        nncf = require("nncf", "openvino")
        samples = [{INPUT_NAME: calib.load(i)[None]} for i in range(len(calib))]
        # Activation ranges are the min/max over all calibration images, not NNCF's default mean of
        # per-image ranges: calib_data/ is shuffled crops, and on real photos (RTF) the mean ranges
        # clipped enough to add 0.013 MAE (σ/3.275) to hdme-edge, the full ranges 0.002. NNCF shows
        # its own progress bars.
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        ranges = nncf.AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
        model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), target_device=nncf.TargetDevice.CPU,
                              advanced_parameters=ranges)
        metadata["calib_sha256"] = calib.sha256
    if precision != "fp32":
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
