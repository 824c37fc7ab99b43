"""The CUDA runtime bindings, shared by the TensorRT builder and the TensorRT engine."""

from __future__ import annotations


def cuda_runtime():
    """The CUDA runtime bindings of cuda-python."""
    from hdme.errors import require

    # cuda-python ≥ 12.6 moved the runtime bindings to cuda.bindings; older releases have cuda.cudart.
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = require("cuda.cudart", "trt")
    return cudart
