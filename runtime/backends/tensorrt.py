"""TensorRT: run a serialised engine with pinned buffers, a CUDA stream and CUDA-graph replay.

Written against TensorRT ≥ 10's named-tensor API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``). An engine only runs on the TensorRT version and GPU it was built for; its
sidecar ``FILE.engine.json`` (hdme.sidecar, written by ``hdme export trt``) records both,
and the backend refuses a mismatch with the command that rebuilds it instead of failing deep
inside TensorRT.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdme.errors import HdmeError, require
from hdme.contract import INPUT_NAME, OUTPUT_NAME
from hdme.sidecar import read_sidecar
from hdme.runtime.backends.base import Backend, InferTimes, check_input
from hdme.cuda import CudaApi, grown_capacity, nbytes, open_cuda_api

log = logging.getLogger("hdme.runtime")


@dataclass(frozen=True)
class SystemInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor"


def _normalise_cc(value) -> str:
    if isinstance(value, (list, tuple)):
        return ".".join(str(int(v)) for v in value)
    return str(value)


def sidecar_mismatches(meta: dict, system: SystemInfo) -> list[str]:
    """What differs between the engine's build system and this one, as short phrases. TensorRT
    needs the exact release that built an engine, and tunes kernels per GPU model."""
    problems = []
    built_trt = str(meta.get("tensorrt_version") or "")
    if built_trt and built_trt.split(".")[:3] != system.tensorrt_version.split(".")[:3]:
        problems.append(f"TensorRT {built_trt} (running {system.tensorrt_version})")
    built_cc = _normalise_cc(meta.get("compute_capability") or "")
    if built_cc and built_cc != system.compute_capability:
        problems.append(f"compute capability {built_cc} (running {system.compute_capability})")
    built_gpu = str(meta.get("gpu_name") or "")
    if built_gpu and built_gpu != system.gpu_name:
        problems.append(f"GPU '{built_gpu}' (running '{system.gpu_name}')")
    return problems


def check_sidecar(engine_path: Path, meta: dict, system: SystemInfo) -> None:
    """Raise one line naming the mismatch and the rebuild command, or return if the engine fits."""
    problems = sidecar_mismatches(meta, system)
    if problems:
        raise HdmeError(
            f"{engine_path}: built for {'; '.join(problems)}; rebuild it here with: hdme export trt "
            f"{engine_path.with_suffix('.onnx')} --out {engine_path} --precision {meta.get('precision') or 'fp32'}"
        )


def fit_profile(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> None:
    """Refuse an input shape outside the engine's optimisation profile with one line."""
    if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
        raise HdmeError(
            f"input {list(shape)} is outside the engine's profile {list(lo)}…{list(hi)}; "
            "resize the input or rebuild the engine with a wider profile (hdme export trt --shapes)"
        )


class TensorRTBackend(Backend):
    """``cuda_graphs``: replay a captured CUDA graph while the input shape stays the same.
    ``cuda_api``: 'cuda-python' | 'pycuda' (default: whichever is installed, cuda-python first)."""

    name = "tensorrt"

    def __init__(self, model_path: Path | str, device_id: int = 0, cuda_graphs: bool = True,
                 cuda_api: str | None = None) -> None:
        super().__init__(model_path)
        meta = read_sidecar(self.model_path)
        trt = require("tensorrt", "trt")
        self.trt = trt
        self.cuda: CudaApi = open_cuda_api(device_id, cuda_api)
        self.device = f"cuda:{device_id}"
        gpu_name, cc = self.cuda.device_info()
        check_sidecar(self.model_path, meta, SystemInfo(trt.__version__, gpu_name, cc))
        self.precision = meta.get("precision") or "fp32"
        # The pipeline pads frames to this multiple, as the engine's profile was built for.
        self.multiple = int(meta["multiple"])
        with self.cuda.current():
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
            if self.engine is None:
                raise HdmeError(
                    f"{self.model_path}: TensorRT {trt.__version__} could not deserialise this engine "
                    "(corrupt, or built by another TensorRT); rebuild it with hdme export trt"
                )
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            if INPUT_NAME not in names or OUTPUT_NAME not in names:
                raise HdmeError(f"{self.model_path}: expected tensors '{INPUT_NAME}' and '{OUTPUT_NAME}', found {names}")
            self.context = self.engine.create_execution_context()
            lo, _, hi = (tuple(d) for d in self.engine.get_tensor_profile_shape(INPUT_NAME, 0))
            self.profile = (lo, hi)
            self.min_hw, self.max_hw = (lo[2], lo[3]), (hi[2], hi[3])
            self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in (INPUT_NAME, OUTPUT_NAME)}
            self.stream = self.cuda.stream_create()
        self.use_graphs = bool(cuda_graphs) and self.cuda.supports_graphs
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, tuple[int, int]] = {}  # name → (pointer, capacity in bytes)
        self._shape: tuple[int, ...] | None = None
        self._graph = None
        self._runs_at_shape = 0

    def _buffer(self, name: str, shape: tuple[int, ...]) -> None:
        dtype = self.dtypes[name]
        needed = nbytes(shape, dtype)
        ptr, capacity = self._device.get(name, (0, 0))
        if needed > capacity:
            if ptr:
                self.cuda.free_device(ptr)
            capacity = grown_capacity(capacity, needed)
            ptr = self.cuda.device_alloc(capacity)
            self._device[name] = (ptr, capacity)
        if name in self._host:
            self.cuda.free_host(self._host[name])
        self._host[name] = self.cuda.host_array(shape, dtype)
        self.context.set_tensor_address(name, ptr)

    def _prepare(self, shape: tuple[int, ...]) -> None:
        if shape == self._shape:
            return
        fit_profile(shape, *self.profile)
        self._drop_graph()
        if not self.context.set_input_shape(INPUT_NAME, shape):
            raise HdmeError(f"TensorRT rejected input shape {list(shape)}")
        self._buffer(INPUT_NAME, shape)
        self._buffer(OUTPUT_NAME, tuple(self.context.get_tensor_shape(OUTPUT_NAME)))
        self._shape = shape
        self._runs_at_shape = 0

    def _drop_graph(self) -> None:
        if self._graph is not None:
            self.cuda.graph_destroy(self._graph)
            self._graph = None

    def _execute(self) -> None:
        handle = self.cuda.stream_handle(self.stream)
        if self._graph is not None:
            self.cuda.graph_launch(self._graph, self.stream)
            return
        if not self.context.execute_async_v3(handle):
            raise HdmeError("TensorRT failed to enqueue the engine")
        self._runs_at_shape += 1
        # TensorRT finishes shape-dependent setup on the first run at a new shape; capture after it.
        if self.use_graphs and self._runs_at_shape == 1:
            self.cuda.stream_sync(self.stream)
            self._graph = self.cuda.capture_graph(self.stream, lambda: self.context.execute_async_v3(handle))
            if self._graph is None:  # an engine TensorRT cannot enqueue under capture: run it directly
                log.warning("TensorRT could not be captured into a CUDA graph at %s; running without one", list(self._shape))

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = check_input(x)
        with self.cuda.current():
            self._prepare(x.shape)
            host_in, host_out = self._host[INPUT_NAME], self._host[OUTPUT_NAME]
            host_in[...] = x
            self.cuda.h2d_async(self._device[INPUT_NAME][0], host_in, self.stream)
            self._execute()
            self.cuda.d2h_async(host_out, self._device[OUTPUT_NAME][0], self.stream)
            self.cuda.stream_sync(self.stream)
            return host_out.astype(np.float32, copy=True)

    def infer_timed(self, x: np.ndarray) -> tuple[np.ndarray, InferTimes]:
        x = check_input(x)
        with self.cuda.current():
            self._prepare(x.shape)
            host_in, host_out = self._host[INPUT_NAME], self._host[OUTPUT_NAME]
            host_in[...] = x
            t0 = time.perf_counter()
            self.cuda.h2d_async(self._device[INPUT_NAME][0], host_in, self.stream)
            self.cuda.stream_sync(self.stream)
            t1 = time.perf_counter()
            self._execute()
            self.cuda.stream_sync(self.stream)
            t2 = time.perf_counter()
            self.cuda.d2h_async(host_out, self._device[OUTPUT_NAME][0], self.stream)
            self.cuda.stream_sync(self.stream)
            t3 = time.perf_counter()
            return host_out.astype(np.float32, copy=True), InferTimes((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def close(self) -> None:
        if getattr(self, "cuda", None) is None or not hasattr(self, "context"):
            return
        with self.cuda.current():
            self._drop_graph()
            for ptr, _ in self._device.values():
                self.cuda.free_device(ptr)
            for array in self._host.values():
                self.cuda.free_host(array)
            self._device.clear()
            self._host.clear()
            self.cuda.stream_destroy(self.stream)
            del self.context, self.engine, self._runtime
        self.cuda.close()
        self.cuda = None
