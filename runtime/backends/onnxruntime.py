"""ONNX Runtime: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hdme.contract import INPUT_NAME, OUTPUT_NAME, model_precision
from hdme.errors import HdmeError
from hdme.io import make_folder
from hdme.runtime.backends.base import Backend, InferTimes, check_input, check_model_io, checked_output

# Short names users type → ONNX Runtime provider names, fastest first.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GRAPH_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def best_provider() -> str:
    """The fastest provider this ONNX Runtime build offers, as a short name."""
    available = set(ort.get_available_providers())
    return next(short for short, full in PROVIDERS.items() if full in available)


def default_cache_dir() -> Path:
    """Where the TensorRT EP keeps engines: the user's cache, since shipped models may sit in a
    read-only install."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hdme" / "ort-tensorrt"


class OnnxRuntimeBackend(Backend):
    """``provider``: cpu | cuda | tensorrt (default: the best available). ``intra_op_threads`` /
    ``inter_op_threads``: 0 lets ONNX Runtime choose. ``fp16``/``int8``: TensorRT EP build flags.
    ``cache_dir``: where the TensorRT EP keeps built engines and timing caches."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path | str,
        provider: str | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        graph_optimization: str = "all",
        fp16: bool = False,
        int8: bool = False,
        cache_dir: Path | str | None = None,
        device_id: int = 0,
        precision: str | None = None,
    ) -> None:
        super().__init__(model_path)
        provider = provider or best_provider()
        if provider not in PROVIDERS:
            raise HdmeError(f"unknown ONNX Runtime provider '{provider}' (choose from {', '.join(PROVIDERS)})")
        if PROVIDERS[provider] not in ort.get_available_providers():
            raise HdmeError(
                f"this ONNX Runtime build has no {PROVIDERS[provider]} (available: {', '.join(ort.get_available_providers())})"
            )
        if graph_optimization not in GRAPH_OPT_LEVELS:
            raise HdmeError(f"unknown graph optimisation level '{graph_optimization}' (choose from {', '.join(GRAPH_OPT_LEVELS)})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = int(inter_op_threads)
        options.graph_optimization_level = GRAPH_OPT_LEVELS[graph_optimization]
        options.log_severity_level = 3
        providers = self._provider_chain(provider, fp16, int8, Path(cache_dir) if cache_dir else default_cache_dir(), device_id)
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises several unrelated types for unreadable graphs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HdmeError(f"{self.model_path}: not a loadable ONNX model ({first[:200]})") from None
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if names_in != [INPUT_NAME] or OUTPUT_NAME not in names_out:
            raise HdmeError(
                f"{self.model_path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', found {names_in} → {names_out}"
            )
        shape_in = self.session.get_inputs()[0].shape
        shape_out = next(o.shape for o in self.session.get_outputs() if o.name == OUTPUT_NAME)
        check_model_io(self.model_path, shape_in, shape_out)
        self.provider = provider
        self.device = "cpu" if provider == "cpu" else f"cuda:{device_id}"
        self.device_id = device_id
        self.precision = precision or ("int8" if int8 else "fp16" if fp16 else model_precision(self.model_path))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.multiple = int(meta.get("multiple", 1))
        self._binding = self.session.io_binding() if provider != "cpu" else None

    @staticmethod
    def _provider_chain(provider: str, fp16: bool, int8: bool, cache_dir: Path, device_id: int) -> list:
        chain: list = []
        if provider == "tensorrt":
            make_folder(cache_dir)
            chain.append(
                (
                    PROVIDERS["tensorrt"],
                    {
                        "device_id": device_id,
                        "trt_fp16_enable": bool(fp16),
                        "trt_int8_enable": bool(int8),
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache_dir),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache_dir),
                    },
                )
            )
        if provider in ("tensorrt", "cuda"):
            chain.append((PROVIDERS["cuda"], {"device_id": device_id}))
        chain.append(PROVIDERS["cpu"])
        return chain

    @classmethod
    def load(cls, model_path: Path | str, precision: str | None = None, threads: int = 0, **options) -> "OnnxRuntimeBackend":
        if precision in ("fp16", "int8") and options.get("provider") == "tensorrt":
            options.setdefault(precision, True)
        return super().load(model_path, precision, intra_op_threads=threads, **options)

    def describe(self) -> str:
        return f"{self.name} [{PROVIDERS[self.provider]}, {self.precision}] {self.model_path.name}"

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x)
        if self._binding is None:
            return checked_output(self.model_path, lambda: self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], x)
        return self.infer_timed(x)[0]

    def infer_timed(self, x: np.ndarray) -> tuple[np.ndarray, InferTimes]:
        x = check_input(x)
        if self._binding is None:
            start = time.perf_counter()
            out = checked_output(self.model_path, lambda: self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], x)
            return out, InferTimes(None, (time.perf_counter() - start) * 1e3, None)
        # On a GPU, IO binding keeps the output on the device until asked for, which both avoids
        # an extra copy and lets each transfer be timed on its own.
        times = []

        def run_bound() -> np.ndarray:
            times.append(time.perf_counter())
            x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", self.device_id)
            times.append(time.perf_counter())
            self._binding.bind_ortvalue_input(INPUT_NAME, x_dev)
            self._binding.bind_output(OUTPUT_NAME, "cuda", self.device_id)
            try:
                self.session.run_with_iobinding(self._binding)
                self._binding.synchronize_outputs()
                times.append(time.perf_counter())
                out = self._binding.get_outputs()[0].numpy()
                times.append(time.perf_counter())
                return out
            finally:
                self._binding.clear_binding_inputs()
                self._binding.clear_binding_outputs()

        # the same one-line errors and output check as the CPU path
        out = checked_output(self.model_path, run_bound, x)
        t0, t1, t2, t3 = times
        return out, InferTimes((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def close(self) -> None:
        self._binding = None
        self.session = None

