"""OpenVINO: ONNX files and OpenVINO IR (``hdme export openvino``) on x86 CPUs.

An FP32 or FP16 model runs at fp32, or at bf16 (or fp16) where the CPU has the arithmetic for it
(OpenVINO's ``INFERENCE_PRECISION_HINT``); an INT8 model (an IR from ``hdme export openvino``, or
ONNX Q/DQ) runs at int8. With no precision asked for, an FP32 model runs at bf16 where the CPU has
it: on hdme-edge that is within 0.001 MAE (σ/10) of fp32 and 3–4× faster on CPUs with AMX (figures
in the README).
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hdme.contract import INPUT_NAME, OUTPUT_NAME, model_metadata, model_precision
from hdme.errors import HdmeError, require
from hdme.runtime.backends.base import Backend, check_input, check_model_io, checked_output

log = logging.getLogger("hdme.runtime")

# hdme precision → OpenVINO inference precision, and the capability a device reports for it.
INFERENCE_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITIES = {"bf16": "BF16", "fp16": "FP16"}
DEFAULT_DEVICE = "CPU"
STATIC_SHAPES = 4  # input shapes kept compiled at a time


@functools.lru_cache(maxsize=1)
def _core():
    return require("openvino", "openvino").Core()


def cpu_precisions(device: str = DEFAULT_DEVICE) -> tuple[str, ...]:
    """The precisions ``device`` computes an FP32 model at: fp32, and bf16/fp16 where it has them."""
    capabilities = set(_core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
    return ("fp32", *(p for p, cap in CAPABILITIES.items() if cap in capabilities))


def _dims(port) -> list[int | None]:
    """A port's shape, None for each dynamic dimension."""
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class OpenVINOBackend(Backend):
    """``precision``: fp32 | bf16 | fp16 for a float model, int8 for an INT8 one (default: bf16
    where the device has it, else fp32; an INT8 model's float layers then use the same). ``threads``:
    inference threads (0: OpenVINO's default). ``device``: an OpenVINO device name (default CPU)."""

    name = "openvino"

    def __init__(self, model_path: Path | str, precision: str | None = None, threads: int = 0,
                 device: str = DEFAULT_DEVICE) -> None:
        super().__init__(model_path)
        core = _core()
        try:
            model = core.read_model(str(self.model_path))
        except RuntimeError as exc:
            raise HdmeError(f"{self.model_path}: OpenVINO cannot read it ({_first_line(exc)})") from None
        names_in = [sorted(p.get_names()) for p in model.inputs]
        names_out = [name for p in model.outputs for name in p.get_names()]
        if len(names_in) != 1 or INPUT_NAME not in names_in[0] or OUTPUT_NAME not in names_out:
            raise HdmeError(
                f"{self.model_path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found {names_in} → {names_out}"
            )
        check_model_io(self.model_path, _dims(model.inputs[0]), _dims(model.output(OUTPUT_NAME)))
        if device not in core.available_devices:
            raise HdmeError(f"OpenVINO has no device '{device}' here (available: {', '.join(core.available_devices)})")
        self.precision, compute = self._precisions(model_precision(self.model_path), precision, cpu_precisions(device))
        config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[compute], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self._model, self._device_name, self._config = model, device, config
        self._dynamic = self._compile(model)
        self._static: OrderedDict[tuple[int, ...], object] = OrderedDict()
        self._seen: set[tuple[int, ...]] = set()
        self._dynamic_only: set[tuple[int, ...]] = set()  # shapes whose fixed-shape compile failed
        self._compiling: dict[tuple[int, ...], Future] = {}
        self._compiler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdme-openvino-compile")
        self.device = device.lower()
        self.compute_precision = compute
        self.multiple = int(model_metadata(self.model_path).get("multiple", 1))

    def _precisions(self, file_precision: str, asked: str | None, supported: tuple[str, ...]) -> tuple[str, str]:
        """(precision reported, precision of the float arithmetic) for a model and a request."""
        fastest_float = "bf16" if "bf16" in supported else "fp32"
        if file_precision == "int8":
            if asked not in (None, "int8"):
                raise HdmeError(f"{self.model_path} is an int8 model; run its FP32 source for {asked}")
            return "int8", fastest_float
        if asked == "int8":
            raise HdmeError(
                f"{self.model_path} is a {file_precision} model; make an INT8 one with: "
                f"hdme export openvino {self.model_path} --precision int8"
            )
        if asked is None:
            return fastest_float, fastest_float
        if asked not in supported:
            raise HdmeError(f"this CPU has no {asked} arithmetic (OpenVINO offers {', '.join(supported)} here); use fp32 or an int8 model")
        return asked, asked

    @classmethod
    def load(cls, model_path: Path | str, precision: str | None = None, threads: int = 0, **options) -> "OpenVINOBackend":
        return cls(model_path, precision=precision, threads=threads, **options)

    def describe(self) -> str:
        compute = "" if self.compute_precision == self.precision else f", float layers {self.compute_precision}"
        return f"{self.name} [{self.device}, {self.precision}{compute}] {self.model_path.name}"

    def _compile(self, model):
        try:
            compiled = _core().compile_model(model, self._device_name, self._config)
        except RuntimeError as exc:
            raise HdmeError(f"{self.model_path}: OpenVINO cannot compile it for {self._device_name} ({_first_line(exc)})") from None
        return compiled.create_infer_request(), compiled.output(OUTPUT_NAME)

    def _compile_for(self, shape: tuple[int, ...]):
        model = self._model.clone()
        try:
            model.reshape({INPUT_NAME: list(shape)})
        except RuntimeError as exc:
            raise HdmeError(f"{self.model_path}: OpenVINO cannot fix its input to {list(shape)} ({_first_line(exc)})") from None
        return self._compile(model)

    def _request_for(self, shape: tuple[int, ...]):
        """The model compiled for ``shape`` once it is ready, else the dynamic one.

        A model compiled for one shape ran hdme-edge at 480×640 about 1.8× faster than the dynamic
        one. Compiling it takes half a second to seconds, so it starts when a shape comes a second
        time (a stream, not a folder of photos of as many sizes) and runs beside inference: a live
        stream must not stall on it."""
        if shape in self._static:
            self._static.move_to_end(shape)
            return self._static[shape]
        pending = self._compiling.get(shape)
        if pending is None:
            if shape in self._seen and shape not in self._dynamic_only:
                self._compiling[shape] = self._compiler.submit(self._compile_for, shape)
            self._seen.add(shape)
        elif pending.done():
            del self._compiling[shape]
            try:
                self._static[shape] = pending.result()
            except HdmeError as exc:
                # The dynamic model still runs this shape: keep to it, say so once, do not retry.
                self._dynamic_only.add(shape)
                log.warning("%s; running that shape on the dynamic model", exc)
                return self._dynamic
            if len(self._static) > STATIC_SHAPES:
                self._static.popitem(last=False)
            return self._static[shape]
        return self._dynamic

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x)
        request, output = self._request_for(x.shape)
        # The request's output tensor is overwritten by the next run: hand out a copy.
        return checked_output(self.model_path, lambda: request.infer({INPUT_NAME: x}, share_inputs=True)[output].copy(), x)

    def close(self) -> None:
        self._compiler.shutdown(wait=True, cancel_futures=True)
        self._compiling.clear()
        self._static.clear()
        self._dynamic = self._model = None
