"""INT8 calibration for TensorRT 10 builds from an FP32 ONNX (builder-flag path), by max ranges.

Not by entropy, TensorRT's usual choice for CNNs: measured with ONNX Runtime's entropy calibration
(a KL-divergence search over 2048 bins, as TensorRT's), it clips this network's activations far
too hard, +0.012 MAE on the synthetic test split and +0.040 on RTF where max ranges cost +0.001
(model card, "INT8 calibration"). The Q/DQ ONNX of ``hdme export quantize`` (percentile ranges)
costs less still.

TensorRT 11 removed implicit INT8 calibration with its calibrator classes; there INT8 comes from a
Q/DQ ONNX written by ``hdme export quantize``, and ``build_mode`` never takes this path. This
module imports tensorrt at import time and is only imported by a TensorRT 10 INT8 build.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorrt as trt

from hdme.errors import HdmeError
from hdme.export.calibration import CalibrationSet, read_calibration_cache, write_calibration_cache
from hdme.cuda import nbytes, open_cuda_api

if not hasattr(trt, "IInt8MinMaxCalibrator"):
    raise HdmeError(
        f"TensorRT {trt.__version__} has no INT8 calibrators (removed in TensorRT 11): quantise the ONNX "
        "with 'hdme export quantize MODEL.onnx --precision int8' and build that file"
    )


class MinMaxCalibrator(trt.IInt8MinMaxCalibrator):
    """Feeds ``calib`` in fixed batches through one device buffer, copied with whichever CUDA library
    the runtime uses here (cuda-python or PyCUDA); the table TensorRT computes is cached in
    ``cache_path`` tagged with the calibration set's hash, so a later build on the same images
    skips calibration and a build on other images does not reuse stale scales."""

    def __init__(self, calib: CalibrationSet, batch_size: int, cache_path: Path):
        trt.IInt8MinMaxCalibrator.__init__(self)
        self.calib = calib
        self.batch_size = batch_size
        self.cache_path = Path(cache_path)
        # A table from the entropy calibrator of earlier releases must not be reused for max ranges.
        self.cache_tag = f"{calib.sha256}:minmax"
        self.batches = calib.batches(batch_size)
        self.cuda = open_cuda_api()
        # PyCUDA allocates in the current context only; TensorRT's builder need not have made one current.
        with self.cuda.current():
            self.stream = self.cuda.stream_create()
            self.host = self.cuda.host_array((batch_size, 3, *calib.size), np.float32)
            self.device = self.cuda.device_alloc(nbytes(self.host.shape, self.host.dtype))

    def __del__(self):
        if getattr(self, "cuda", None) is not None:
            with self.cuda.current():
                self.cuda.free_device(self.device)
                self.cuda.free_host(self.host)
                self.cuda.stream_destroy(self.stream)
            self.cuda.close()
            self.cuda = None

    def get_batch_size(self) -> int:
        return self.batch_size

    def get_batch(self, names):
        batch = next(self.batches, None)
        if batch is None:
            return None
        with self.cuda.current():
            self.host[...] = batch
            self.cuda.h2d_async(self.device, self.host, self.stream)
            self.cuda.stream_sync(self.stream)
        return [self.device]

    def read_calibration_cache(self):
        return read_calibration_cache(self.cache_path, self.cache_tag)

    def write_calibration_cache(self, cache) -> None:
        write_calibration_cache(self.cache_path, bytes(cache), self.cache_tag)
