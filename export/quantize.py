"""FP16 and INT8 variants of an FP32 hdme ONNX model.

- FP16: float32 IO, float16 inside; ModelOpt AutoCast when installed, onnxconverter-common
  otherwise, with the ops that lose accuracy in float16 kept in float32.
- INT8 for TensorRT: explicit Q/DQ, symmetric signed INT8 (zero points 0), per-channel weights,
  float biases: what TensorRT's explicit quantisation accepts.
- INT8 for CPUs: unsigned activations and signed per-channel weights, the layout ONNX Runtime's
  CPU kernels fuse into integer convolutions.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
from pathlib import Path

from hdme.errors import HdmeError
from hdme.io import atomic_path

PRECISIONS = ("fp16", "int8")
TARGETS = ("tensorrt", "cpu")
METHODS = ("max", "entropy", "percentile")
# Per layout, the calibration that cost the least accuracy on every set measured (model card,
# "INT8 calibration"): symmetric TensorRT ranges spend half their levels on the unused negative
# side of ReLU outputs, so clipping the rarest 0.001 % of values pays there; CPU ranges are
# asymmetric and keep every value.
DEFAULT_METHODS = {"tensorrt": "percentile", "cpu": "max"}
BACKENDS = ("auto", "modelopt", "ort")
PERCENTILE = 99.999


def head_nodes(model) -> list[str]:
    """The upsampling head: nodes of the network's ``up``/``out`` modules, the Resize and Concat
    nodes feeding them, and everything after the last convolution.

    Measured on a briefly trained hdme-tiny (held-out blurred shuffled images, FP32 reference):
    keeping the head in float cuts the mean INT8 error from 0.18 to 0.12 px for TensorRT Q/DQ and
    from 0.080 to 0.040 px for the CPU layout, because its thin full-resolution layers quantise
    worst. On ONNX Runtime
    CPU the float head costs ~20 % of hdme-edge's time at 480×640 (62 vs 50 ms), and the fully
    quantised CPU model stays within the MAE bound, so only the TensorRT target keeps it."""
    producers = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    head = [n for n in model.graph.node if n.name.startswith(("/up.", "/up/", "/out/"))]
    selected = {n.name for n in head}
    stack = list(head)
    while stack:
        node = stack.pop()
        for name in node.input:
            prev = producers.get(name)
            if prev is not None and prev.op_type in ("Concat", "Resize") and prev.name not in selected:
                selected.add(prev.name)
                stack.append(prev)
        if node.name.startswith("/out/") or node.op_type in ("Slice", "Clip"):
            for name in node.output:
                for nxt in consumers.get(name, []):
                    if nxt.name not in selected:
                        selected.add(nxt.name)
                        stack.append(nxt)
    return sorted(selected)


def exclusion_patterns(names: list[str]) -> list[str]:
    """ModelOpt reads ``nodes_to_exclude`` as regular expressions matched at the start of each node
    name (``re.match``): '/Concat_3' would also exclude '/Concat_30'. Escaped and anchored at the
    end, each name selects its own node only."""
    return [re.escape(name) + r"\Z" for name in names]


def default_output(src: str | os.PathLike, precision: str, target: str = "tensorrt") -> Path:
    """model.onnx → model.fp16.onnx, model.int8.onnx (TensorRT) or model.int8-cpu.onnx."""
    src = Path(src)
    tag = precision if precision == "fp16" or target == "tensorrt" else "int8-cpu"
    return src.with_name(f"{src.stem}.{tag}.onnx")


def require_fp32(src: Path):
    from hdme.export.onnx import load_onnx, precision

    model = load_onnx(src)
    kind = precision(model)
    if kind != "fp32":
        raise HdmeError(f"{src}: already {kind}; quantise the FP32 export instead")
    return model


def _modelopt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("modelopt") is not None


def _save(model, out: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))


def convert_fp16(src: str | os.PathLike, out: str | os.PathLike, backend: str = "auto", exclude: list[str] | None = None) -> str:
    """Write the FP16 variant of ``src`` to ``out``; returns the backend used."""
    src, out = Path(src), Path(out)
    model = require_fp32(src)
    use_modelopt = backend == "modelopt" or (backend == "auto" and _modelopt_available())
    if use_modelopt:
        from hdme.errors import require

        autocast = require("modelopt.onnx.autocast", "modelopt")
        converted = autocast.convert_to_mixed_precision(
            onnx_path=str(src),
            low_precision_type="fp16",
            nodes_to_exclude=exclusion_patterns(exclude) if exclude else None,
            keep_io_types=True,
        )
    else:
        import copy

        from onnxconverter_common import float16

        stripped = copy.deepcopy(model)
        # Stale float32 value_info left by shape inference makes the converter label the casts
        # it inserts around blocked ops with the wrong type; it re-infers the shapes itself.
        del stripped.graph.value_info[:]
        # The default op block list keeps Resize in float32 (converted, its float16 scales make
        # an invalid graph). Nothing else needs blocking: the FP16 head and output layers change
        # σ by 0.001–0.003 px on average (max 0.02–0.14 px) on hdme-tiny and hdme-edge.
        converted = float16.convert_float_to_float16(
            stripped,
            keep_io_types=True,
            op_block_list=float16.DEFAULT_OP_BLOCK_LIST,
            node_block_list=exclude or None,
        )
    _copy_metadata(model, converted, precision="fp16")
    _save(converted, out)
    return "modelopt" if use_modelopt else "onnxconverter-common"


def _copy_metadata(source, target, **extra: str) -> None:
    from hdme.export.onnx import metadata, set_metadata

    set_metadata(target, {**metadata(source), **extra})


def calibration_method(method: str | None, target: str, backend: str = "auto") -> str:
    """The calibration ``quantize_int8`` uses: ``method``, or the target's default (max with
    ModelOpt, which has no percentile)."""
    if method is not None:
        return method
    return "max" if backend == "modelopt" else DEFAULT_METHODS.get(target, "max")


def quantize_int8(
    src: str | os.PathLike,
    out: str | os.PathLike,
    calib,
    method: str | None = None,
    target: str = "tensorrt",
    backend: str = "auto",
    exclude: list[str] | None = None,
    keep_head: bool | None = None,
    progress=None,
) -> str:
    """Write the INT8 variant of ``src`` calibrated on ``calib`` (a CalibrationSet); returns the
    backend used. ``method``: max, entropy or percentile (None: ``DEFAULT_METHODS`` of the target,
    max with ModelOpt).
    ``keep_head``: leave the upsampling head in float (default: for TensorRT only)."""
    src, out = Path(src), Path(out)
    method = calibration_method(method, target, backend)
    if method not in METHODS:
        raise HdmeError(f"calibration method '{method}': expected one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise HdmeError(f"target '{target}': expected one of {', '.join(TARGETS)}")
    model = require_fp32(src)
    if keep_head is None:
        keep_head = target == "tensorrt"
    exclude = sorted(set(exclude or []) | set(head_nodes(model) if keep_head else []))
    if backend == "modelopt" and target == "cpu":
        raise HdmeError("ModelOpt writes TensorRT Q/DQ graphs only; the CPU layout is quantised with ONNX Runtime")
    if backend == "modelopt" and method == "percentile":
        raise HdmeError("ModelOpt calibrates INT8 with 'max' or 'entropy', not 'percentile'; ONNX Runtime has all three")
    # ModelOpt has no percentile calibration: 'auto' takes ONNX Runtime's for it.
    use_modelopt = target == "tensorrt" and (
        backend == "modelopt" or (backend == "auto" and method != "percentile" and _modelopt_available())
    )
    import onnx

    with atomic_path(out) as tmp:
        if use_modelopt:
            _quantize_modelopt(src, tmp, calib, method, exclude)
        else:
            _quantize_ort(src, tmp, calib, method, target, exclude, progress)
        quantized = onnx.load(str(tmp))
        _copy_metadata(model, quantized, precision="int8", int8_target=target, calib_sha256=calib.sha256)
        onnx.checker.check_model(quantized)
        onnx.save(quantized, str(tmp))
    return "modelopt" if use_modelopt else "ort"


def _quantize_modelopt(src: Path, out: Path, calib, method: str, exclude: list[str] | None) -> None:
    import numpy as np

    from hdme.errors import require

    quantization = require("modelopt.onnx.quantization", "modelopt")
    data = np.stack([calib.load(i) for i in range(len(calib))])
    options = {}
    # Releases with high_precision_dtype default it to fp16, which would turn the head kept out of
    # INT8 into FP16: the accuracy bounds were measured with it in float32.
    if "high_precision_dtype" in inspect.signature(quantization.quantize).parameters:
        options["high_precision_dtype"] = "fp32"
    quantization.quantize(
        onnx_path=str(src),
        quantize_mode="int8",
        calibration_data=data,
        calibration_method=method,
        nodes_to_exclude=exclusion_patterns(exclude) if exclude else None,
        output_path=str(out),
        **options,
    )


@contextlib.contextmanager
def _ort_quiet():
    """Silence onnxruntime.quantization's prints and root-logger warnings (pre-processing advice
    that does not apply to an onnxslim-simplified graph); errors still raise."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def ort_takes_calibration_ranges() -> bool:
    """Whether ``quantize_static`` accepts ranges computed beforehand (``calibration_cache_path``,
    with ``save_tensors_data`` beside it: onnxruntime 1.27 and later)."""
    from onnxruntime.quantization import calibrate, quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters and hasattr(
        calibrate, "save_tensors_data"
    )


def _quantize_ort(src: Path, out: Path, calib, method: str, target: str, exclude: list[str] | None, progress) -> None:
    import tempfile

    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from hdme.export.calibration import ort_calibration_reader
    from hdme.contract import INPUT_NAME

    calibrate_method = {
        "max": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    symmetric = target == "tensorrt"
    takes_ranges = ort_takes_calibration_ranges()
    if method == "entropy" and not takes_ranges:
        raise HdmeError(
            f"entropy calibration needs onnxruntime 1.27 or later (found {onnxruntime.__version__}): older "
            "releases search 128 histogram bins for 128 levels and return the max range; "
            "use --method max or percentile, or upgrade onnxruntime"
        )
    settings = dict(
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        # TensorRT: signed activations with zero point 0. CPU: unsigned activations, which the MLAS
        # integer convolutions of ONNX Runtime consume directly (U8S8).
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude or None,
        calibrate_method=calibrate_method,
    )
    quantization_options = {
        # Biases stay float: TensorRT's Q/DQ types are 8-bit (and smaller); an int32 bias
        # DequantizeLinear is not one of them, and both runtimes fuse a float bias into the conv.
        "QuantizeBias": False,
        "WeightSymmetric": True,
        "ActivationSymmetric": symmetric,
    }
    if not takes_ranges:
        # quantize_static calibrates itself: max and percentile (2048 bins) come out as below.
        with _ort_quiet():
            quantize_static(
                str(src), str(out), ort_calibration_reader(calib, INPUT_NAME, progress), **settings,
                extra_options={**quantization_options, "CalibTensorRangeSymmetric": symmetric, "CalibPercentile": PERCENTILE},
            )
        return

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="hdme-calib-") as work:
        # The ranges are computed here rather than inside quantize_static, which cannot set the
        # histogram size: its entropy default of 128 bins for 128 quantised bins leaves the
        # search nothing to choose and returns the max range. 2048 bins as TensorRT's entropy
        # calibrator uses.
        calibrator = create_calibrator(
            src,
            augmented_model_path=str(Path(work) / "augmented.onnx"),
            calibrate_method=calibrate_method,
            extra_options={"symmetric": symmetric, "num_bins": 2048, "num_quantized_bins": 128, "percentile": PERCENTILE},
        )
        with _ort_quiet():
            calibrator.collect_data(ort_calibration_reader(calib, INPUT_NAME, progress))
            ranges = Path(work) / "ranges.json"
            save_tensors_data(calibrator.compute_data(), ranges)
        del calibrator
        with _ort_quiet():
            quantize_static(
                str(src), str(out), None, **settings,
                calibration_cache_path=str(ranges), extra_options=quantization_options,
            )
