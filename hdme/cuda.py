"""CUDA memory, streams and device queries behind one small interface, shared by the TensorRT
builder (INT8 calibration, the GPU an engine is built for) and the TensorRT engine.

Two implementations: NVIDIA's cuda-python (preferred) and PyCUDA (the fallback many Jetson images
ship instead). Imported only where TensorRT is used.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
from typing import Iterator

import numpy as np

from hdme.errors import HdmeError


def nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def grown_capacity(current: int, needed: int) -> int:
    """Bytes to allocate for ``needed``: keep a big-enough buffer, else grow by at least 1.5× so a
    stream of slowly growing shapes does not reallocate on every frame."""
    if needed <= current:
        return current
    return max(needed, int(current * 1.5))


class CudaApi(abc.ABC):
    """Pinned host arrays, device allocations, async copies and streams on one GPU."""

    name: str
    supports_graphs: bool = False

    @abc.abstractmethod
    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A page-locked host array (fast, truly asynchronous copies)."""

    @abc.abstractmethod
    def free_host(self, array: np.ndarray) -> None: ...

    @abc.abstractmethod
    def device_alloc(self, size: int) -> int:
        """Allocate ``size`` bytes on the device; returns the device pointer."""

    @abc.abstractmethod
    def free_device(self, ptr: int) -> None: ...

    @abc.abstractmethod
    def h2d_async(self, dst: int, src: np.ndarray, stream) -> None: ...

    @abc.abstractmethod
    def d2h_async(self, dst: np.ndarray, src: int, stream) -> None: ...

    @abc.abstractmethod
    def stream_create(self): ...

    @abc.abstractmethod
    def stream_handle(self, stream) -> int:
        """The raw ``cudaStream_t`` as an int, as TensorRT's ``execute_async_v3`` takes it."""

    @abc.abstractmethod
    def stream_sync(self, stream) -> None: ...

    @abc.abstractmethod
    def stream_destroy(self, stream) -> None: ...

    @abc.abstractmethod
    def device_info(self) -> tuple[str, str]:
        """(GPU name, compute capability as 'major.minor')."""

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """Make this API's device/context current in the calling thread for the block."""
        yield

    def capture_graph(self, stream, launch) -> object | None:
        """Record what ``launch()`` enqueues on ``stream`` into an executable CUDA graph; None when
        ``launch()`` returns False or the capture fails, so the caller runs without a graph."""
        raise HdmeError(f"{self.name} cannot capture CUDA graphs")

    def graph_launch(self, graph, stream) -> None:
        raise HdmeError(f"{self.name} cannot launch CUDA graphs")

    def graph_destroy(self, graph) -> None:
        pass

    def close(self) -> None:
        pass


def cuda_runtime():
    """The CUDA runtime bindings of cuda-python."""
    from hdme.errors import require

    # cuda-python ≥ 12.6 moved the runtime bindings to cuda.bindings; older releases have cuda.cudart.
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = require("cuda.cudart", "trt")
    return cudart


class CudaPythonApi(CudaApi):
    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device_id: int = 0) -> None:
        self.rt = cuda_runtime()
        self.device_id = device_id
        self._check(self.rt.cudaSetDevice(device_id))
        self._host: dict[int, int] = {}  # id(array) → pinned pointer

    def _check(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            raise RuntimeError(f"CUDA error: {text.decode() if isinstance(text, bytes) else text}")
        return values[0] if len(values) == 1 else values

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        # The runtime API binds the device per thread; pipeline threads differ from the creator's.
        self._check(self.rt.cudaSetDevice(self.device_id))
        yield

    def host_array(self, shape, dtype):
        size = max(nbytes(shape, dtype), 1)
        ptr = int(self._check(self.rt.cudaMallocHost(size)))
        raw = (ctypes.c_byte * size).from_address(ptr)
        array = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        self._host[id(array)] = ptr
        return array

    def free_host(self, array):
        ptr = self._host.pop(id(array), None)
        if ptr is not None:
            self._check(self.rt.cudaFreeHost(ptr))

    def device_alloc(self, size):
        return int(self._check(self.rt.cudaMalloc(max(size, 1))))

    def free_device(self, ptr):
        self._check(self.rt.cudaFree(ptr))

    def h2d_async(self, dst, src, stream):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def d2h_async(self, dst, src, stream):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def stream_create(self):
        # Graph capture is not allowed on the legacy default stream, and a non-blocking stream
        # does not serialise against other libraries' work on it.
        return self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking))

    def stream_handle(self, stream):
        # int(stream) is deprecated from cuda-bindings 12.9.1/13.0 in favour of this helper.
        try:
            from cuda.bindings.utils import get_cuda_native_handle
        except ImportError:
            return int(stream)
        return int(get_cuda_native_handle(stream))

    def stream_sync(self, stream):
        self._check(self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream):
        self._check(self.rt.cudaStreamDestroy(stream))

    def device_info(self):
        prop = self._check(self.rt.cudaGetDeviceProperties(self.device_id))
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.split("\x00")[0].strip(), f"{prop.major}.{prop.minor}"

    def capture_graph(self, stream, launch):
        # Thread-local mode, as trtexec captures: in global mode a CUDA call that is unsafe during
        # a capture (an allocation, a synchronisation) from any other thread invalidates it.
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        success = self.rt.cudaError_t.cudaSuccess
        self._check(self.rt.cudaStreamBeginCapture(stream, mode))
        launched = False
        try:
            launched = bool(launch())
        finally:
            # The capture must end whatever happened, or the stream stays in capture mode.
            err, graph = self.rt.cudaStreamEndCapture(stream)
        if err != success:
            self.rt.cudaGetLastError()  # a failed capture leaves its error as the thread's last one
            return None
        try:
            if not launched:
                return None
            err, graph_exec = self.rt.cudaGraphInstantiate(graph, 0)
            if err != success:
                self.rt.cudaGetLastError()
                return None
            return graph_exec
        finally:
            self._check(self.rt.cudaGraphDestroy(graph))

    def graph_launch(self, graph, stream):
        self._check(self.rt.cudaGraphLaunch(graph, stream))

    def graph_destroy(self, graph):
        self._check(self.rt.cudaGraphExecDestroy(graph))


class PyCudaApi(CudaApi):
    name = "pycuda"

    def __init__(self, device_id: int = 0) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        cuda.init()
        self.device = cuda.Device(device_id)
        # TensorRT works in the device's primary context (the runtime API's); share it.
        self.context = self.device.retain_primary_context()
        self._allocations: dict[int, object] = {}

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        self.context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def host_array(self, shape, dtype):
        return self.cuda.pagelocked_empty(shape, dtype)

    def free_host(self, array):
        base = array.base
        if hasattr(base, "free"):
            base.free()

    def device_alloc(self, size):
        allocation = self.cuda.mem_alloc(max(size, 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free_device(self, ptr):
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def h2d_async(self, dst, src, stream):
        self.cuda.memcpy_htod_async(dst, src, stream)

    def d2h_async(self, dst, src, stream):
        self.cuda.memcpy_dtoh_async(dst, src, stream)

    def stream_create(self):
        return self.cuda.Stream()

    def stream_handle(self, stream):
        return int(stream.handle)

    def stream_sync(self, stream):
        stream.synchronize()

    def stream_destroy(self, stream):
        pass  # PyCUDA frees a stream when it is garbage collected

    def device_info(self):
        major, minor = self.device.compute_capability()
        return self.device.name(), f"{major}.{minor}"

    def close(self):
        self._allocations.clear()
        self.context.detach()


# In the order they are tried: cuda-python first, PyCUDA (what many Jetson images ship) next.
CUDA_APIS: dict[str, type[CudaApi]] = {"cuda-python": CudaPythonApi, "pycuda": PyCudaApi}


def open_cuda_api(device_id: int = 0, prefer: str | None = None) -> CudaApi:
    """The first library of CUDA_APIS that is installed and can use the GPU; ``prefer`` forces one.

    A library that is installed but cannot start (cuda-python 13 under a CUDA 12 driver, as on
    JetPack 6) counts as missing: the next one is tried."""
    if prefer is not None and prefer not in CUDA_APIS:
        raise HdmeError(f"unknown CUDA buffer library '{prefer}' (choose from {', '.join(CUDA_APIS)})")
    errors = []
    for name in [prefer] if prefer else list(CUDA_APIS):
        try:
            return CUDA_APIS[name](device_id)
        except Exception as exc:  # noqa: BLE001 (each library fails in its own types: ImportError, RuntimeError, pycuda's Error)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            errors.append(f"{name}: {first}")
    raise HdmeError(
        f"no CUDA library could use GPU {device_id} for TensorRT's buffers ({'; '.join(errors)}); "
        "'hdme doctor' names the fix"
    )
