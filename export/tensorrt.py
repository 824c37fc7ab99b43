"""TensorRT engine builds from hdme ONNX files (TensorRT ≥ 10), with a JSON sidecar.

Strongly typed builds take the precision from the ONNX graph (FP16 from AutoCast or
onnxconverter-common, INT8 from explicit Q/DQ); that is the only path on TensorRT 11. On
TensorRT 10 an FP32 ONNX may also be built with the FP16/INT8 builder flags, INT8 then calibrated
by an IInt8MinMaxCalibrator over calib_data/. tensorrt itself is imported only inside
``build_engine``: profiles, sidecars and calibration caches work without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hdme.console import make_console
from hdme.errors import HdmeError

PRECISIONS = ("fp32", "fp16", "int8")
# Sides are multiples of the network's 32 because the runtime pads frames to them: 720p frames run
# at 736×1280 (the shape tuned for), 1080p ones at 1088×1920 (the largest).
DEFAULT_SHAPES = "1x3x256x256:1x3x736x1280:1x3x1088x1920"
CALIB_BATCH = 8


@dataclass(frozen=True)
class Profile:
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(d) for d in text.strip().lower().split("x"))
    except ValueError:
        raise HdmeError(f"shape '{text}': expected NxCxHxW, e.g. 1x3x480x640") from None
    if len(dims) != 4 or min(dims) < 1:
        raise HdmeError(f"shape '{text}': expected four positive sizes NxCxHxW")
    return dims  # type: ignore[return-value]


def parse_shapes(text: str) -> Profile:
    """'1x3x256x256:1x3x736x1280:1x3x1088x1920' (min:opt:max), or one shape for a fixed profile."""
    parts = text.split(":")
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise HdmeError(f"shapes '{text}': expected min:opt:max, e.g. {DEFAULT_SHAPES}")
    return Profile(*(_parse_shape(p) for p in parts))


def validate_profile(profile: Profile, multiple: int, dims: list[int | None]) -> None:
    """The profile must fit the network: 3 channels, min ≤ opt ≤ max, sides multiples of the
    network's multiple, and equal to the ONNX input where that dimension is static."""
    from hdme.export.onnx import check_multiple

    for label, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        if shape[1] != 3:
            raise HdmeError(f"{label} shape {'x'.join(map(str, shape))}: the network takes 3 channels (RGB)")
        check_multiple(shape[2], shape[3], multiple, f"{label} shape")
        for axis, (want, got) in enumerate(zip(dims, shape)):
            if want is not None and want != got:
                raise HdmeError(
                    f"{label} shape {'x'.join(map(str, shape))}: the ONNX input is static with size {want} on axis {axis}"
                )
    for a, b, names in ((profile.min, profile.opt, "min > opt"), (profile.opt, profile.max, "opt > max")):
        if any(x > y for x, y in zip(a, b)):
            raise HdmeError(f"shapes: {names} on some axis ({'x'.join(map(str, a))} vs {'x'.join(map(str, b))})")


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def build_mode(onnx_precision: str, requested: str | None, trt_major: int) -> tuple[str, str]:
    """(precision, 'strong'|'flags') for an ONNX of ``onnx_precision`` and a requested precision.

    A reduced-precision ONNX is always built strongly typed, its types deciding. An FP32 ONNX with
    fp16/int8 requested needs the builder flags, which TensorRT 11 removed (with the INT8
    calibrators): there the ONNX must be converted first."""
    requested = requested or onnx_precision
    if requested not in PRECISIONS:
        raise HdmeError(f"precision '{requested}': expected one of {', '.join(PRECISIONS)}")
    if onnx_precision != "fp32":
        if requested != onnx_precision:
            raise HdmeError(f"the ONNX is already {onnx_precision}; build it as {onnx_precision} or start from the FP32 export")
        return onnx_precision, "strong"
    if requested == "fp32":
        return "fp32", "strong"
    if trt_major >= 11:
        raise HdmeError(
            f"TensorRT {trt_major} builds reduced precision only from typed ONNX: run "
            f"'hdme export quantize MODEL.onnx --precision {requested}' and build that file"
        )
    return requested, "flags"


def gpu_info(device_id: int = 0) -> tuple[str, str]:
    """(name, compute capability 'major.minor') of a CUDA device, through whichever CUDA library
    the runtime's buffers use here, so that an engine's sidecar names the GPU as the runtime sees it."""
    from hdme.cuda import open_cuda_api

    api = open_cuda_api(device_id)
    try:
        return api.device_info()
    finally:
        api.close()


def tensorrt_qdq_problem(model) -> str | None:
    """Why TensorRT cannot build this Q/DQ graph, or None. TensorRT quantises symmetrically: signed
    INT8 with zero point 0; ONNX Runtime's CPU layout has unsigned activations with other zero points."""
    from onnx import TensorProto, numpy_helper

    from hdme.export.onnx import metadata

    if metadata(model).get("int8_target") == "cpu":
        return "it was quantised for ONNX Runtime's CPU kernels (unsigned activations, zero points not 0)"
    constants = {i.name: i for i in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"})
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or node.input[2] not in constants:
            continue
        zero_point = constants[node.input[2]]
        if zero_point.data_type in (TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT4):
            return f"{node.name} quantises to {TensorProto.DataType.Name(zero_point.data_type)}; TensorRT takes signed types"
        if numpy_helper.to_array(zero_point).astype(float).any():
            return f"{node.name} has a zero point other than 0"
    return None


def calibration_shape(dims: list[int | None], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The fixed NCHW shape the INT8 calibrator feeds: CALIB_BATCH images of ``size``, except on
    the axes where the ONNX input is static, which keep its size."""
    n, _, h, w = dims
    return (n or CALIB_BATCH, 3, h or size[0], w or size[1])


def _progress_monitor(trt, console):
    """A TensorRT progress monitor printing build phases (TensorRT ≥ 10.0 has IProgressMonitor)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            console.print(f"{'  ' * self.depth[phase_name]}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return Monitor()


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike,
    precision: str | None = None,
    shapes: str = DEFAULT_SHAPES,
    workspace_gb: float = 2.0,
    timing_cache: str | os.PathLike | None = None,
    calib_dir: str | os.PathLike | None = None,
    calib_cache: str | os.PathLike | None = None,
) -> dict:
    """Build ``out`` from ``onnx_path`` and write its sidecar; returns the sidecar contents."""
    from hdme import __version__
    from hdme.errors import require
    from hdme.export.onnx import input_dims, load_onnx, metadata, network_multiple
    from hdme.export.onnx import precision as onnx_precision
    from hdme.sidecar import file_sha256, write_sidecar
    from hdme.io import atomic_path, write_bytes

    console = make_console(stderr=True)
    onnx_path, out = Path(onnx_path), Path(out)
    model = load_onnx(onnx_path)
    if out.suffix not in (".engine", ".plan"):
        raise HdmeError(f"{out}: a TensorRT engine file ends in .engine or .plan")
    multiple, dims = network_multiple(model), input_dims(model)
    profile = parse_shapes(shapes)
    validate_profile(profile, multiple, dims)
    if onnx_precision(model) == "int8":
        problem = tensorrt_qdq_problem(model)
        if problem:
            raise HdmeError(
                f"{onnx_path}: TensorRT cannot build this INT8 graph: {problem}; quantise the FP32 ONNX "
                "for TensorRT with: hdme export quantize MODEL.onnx --precision int8"
            )
    # Which GPU the engine is for, before the build: a machine whose CUDA libraries cannot reach
    # the GPU fails here, not after minutes of building.
    gpu_name, capability = gpu_info()
    trt = require("tensorrt", "trt")
    major = tensorrt_major(trt)
    if major < 10:
        raise HdmeError(f"TensorRT {trt.__version__} is too old: hdme builds with TensorRT 10 or newer")
    kind, mode = build_mode(onnx_precision(model), precision, major)
    calib = calib_shape = None
    if mode == "flags" and kind == "int8":
        from hdme.export.calibration import CALIB_SIZE, CalibrationSet, default_calibration_folder

        calib_shape = calibration_shape(dims, CALIB_SIZE)
        validate_profile(Profile(calib_shape, calib_shape, calib_shape), multiple, dims)
        calib = CalibrationSet(calib_dir if calib_dir is not None else default_calibration_folder(), size=calib_shape[2:])
    calib_sha = calib.sha256 if calib is not None else metadata(model).get("calib_sha256")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # STRONGLY_TYPED is required for typed builds on TensorRT 10 and accepted (ignored) on 11,
    # where every network is strongly typed.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if mode == "strong" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HdmeError(f"{onnx_path}: TensorRT cannot parse it ({errors.splitlines()[0] if errors else 'unknown error'})")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    trt_profile = builder.create_optimization_profile()
    input_name = network.get_input(0).name
    trt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    if mode == "flags":
        config.set_flag(trt.BuilderFlag.FP16)
        if kind == "int8":
            from hdme.export.trt_calibrator import MinMaxCalibrator

            config.set_flag(trt.BuilderFlag.INT8)
            # The calibrator feeds batches of one fixed shape: calibrate on a profile of that shape.
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(input_name, calib_shape, calib_shape, calib_shape)
            config.set_calibration_profile(calib_profile)
            cache_path = Path(calib_cache) if calib_cache else out.with_name(out.name + ".calib")
            config.int8_calibrator = MinMaxCalibrator(calib, calib_shape[0], cache_path)

    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
        raise HdmeError(
            f"{timing_cache}: a timing cache from another GPU or TensorRT release; delete it or use another file"
        )
    monitor = _progress_monitor(trt, console)
    if monitor is not None:
        config.progress_monitor = monitor

    how = "strongly typed" if mode == "strong" else "builder flags"
    console.print(f"building {out.name}: TensorRT {trt.__version__}, {kind}, {how}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HdmeError(f"TensorRT could not build {onnx_path.name} (see the messages above)")
    info = {
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu_name,
        "compute_capability": capability,
        "precision": kind,
        "profile": profile.as_dict(),
        "multiple": multiple,
        "onnx_sha256": file_sha256(onnx_path),
        "calib_sha256": calib_sha,
        "hdme_version": __version__,
    }
    with atomic_path(out) as tmp:
        tmp.write_bytes(memoryview(serialized))
        write_sidecar(out, info)
    if timing_cache:
        write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return info
