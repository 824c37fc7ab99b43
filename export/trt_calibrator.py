"""INT8 entropy calibration for TensorRT 10 builds from an FP32 ONNX (builder-flag path).

TensorRT 11 removed implicit INT8 calibration; there INT8 comes from a Q/DQ ONNX written by
``hdme export quantize``. This module imports tensorrt and cuda-python at import time and is only
imported by a TensorRT 10 INT8 build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorrt as trt

from hdme.export.calibration import CalibrationSet, read_calibration_cache, write_calibration_cache
from hdme.cuda import cuda_runtime

cudart = cuda_runtime()


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """Feeds ``calib`` in fixed batches through one device buffer; the table TensorRT computes is
    cached in ``cache_path`` tagged with the calibration set's hash, so a later build on the same
    images skips calibration and a build on other images does not reuse stale scales."""

    def __init__(self, calib: CalibrationSet, batch_size: int, cache_path: Path):
        trt.IInt8EntropyCalibrator2.__init__(self)
        self.calib = calib
        self.batch_size = batch_size
        self.cache_path = Path(cache_path)
        self.calib_sha256 = calib.sha256
        self.batches = calib.batches(batch_size)
        nbytes = batch_size * 3 * calib.size[0] * calib.size[1] * np.dtype(np.float32).itemsize
        self.device = _check(cudart.cudaMalloc(nbytes))

    def __del__(self):
        if getattr(self, "device", None):
            cudart.cudaFree(self.device)

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names):
        batch = next(self.batches, None)
        if batch is None:
            return None
        host = np.ascontiguousarray(batch, dtype=np.float32)
        _check(cudart.cudaMemcpy(self.device, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
        return [int(self.device)]

    def read_calibration_cache(self):
        return read_calibration_cache(self.cache_path, self.calib_sha256)

    def write_calibration_cache(self, cache) -> None:
        write_calibration_cache(self.cache_path, bytes(cache), self.calib_sha256)
