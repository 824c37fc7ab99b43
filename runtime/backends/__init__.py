"""Inference backends behind one interface, and the choice of one for a model.

A model is a shipped name ("hdme-edge"), a ``.safetensors`` (torch), an ``.onnx`` (ONNX Runtime)
or an ``.engine`` (TensorRT). ``create_backend(model, "auto")`` picks the engine the file needs,
or for a shipped name its ONNX export, and records why in ``backend.selection``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from hdme.errors import HdmeError
from hdme.runtime.backends.base import PRECISIONS, Backend, InferTimes

log = logging.getLogger("hdme.runtime")
BACKEND_NAMES = ("auto", "onnxruntime", "tensorrt", "torch")
FILE_BACKENDS = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".safetensors": "torch"}

__all__ = ["Backend", "InferTimes", "PRECISIONS", "BACKEND_NAMES", "available_backends", "create_backend", "resolve_model"]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Engines that can run here (without importing them)."""
    names = ["onnxruntime"]
    if _installed("tensorrt") and (_installed("cuda") or _installed("pycuda")):
        names.append("tensorrt")
    if _installed("torch"):
        names.append("torch")
    return names


def resolve_model(model: str | Path | None, backend: str = "auto", precision: str | None = None) -> tuple[str, str, str]:
    """(backend name, file or shipped name to load, why) for a model argument."""
    from hdme.weights import DEFAULT_MODEL, find_weights

    if backend not in BACKEND_NAMES:
        raise HdmeError(f"unknown backend '{backend}' (choose from {', '.join(BACKEND_NAMES)})")
    if precision is not None and precision not in PRECISIONS:
        raise HdmeError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    model = str(model) if model is not None else DEFAULT_MODEL
    path = Path(model)
    if path.suffix or path.parent != Path(".") or path.exists():
        if not path.exists():
            raise HdmeError(f"{path}: no such model file")
        if path.is_dir() or path.suffix.lower() not in FILE_BACKENDS:
            raise HdmeError(f"{path}: not a model file (expected {', '.join(FILE_BACKENDS)} or a shipped model name)")
        needed = FILE_BACKENDS[path.suffix.lower()]
        if backend not in ("auto", needed):
            raise HdmeError(f"{path}: a {path.suffix} file runs on the {needed} backend, not {backend}")
        return needed, str(path), f"{path.suffix} file → {needed}"

    files = find_weights(model)
    onnx_key = "int8-cpu" if precision == "int8" else "onnx"
    if backend in ("auto", "onnxruntime") and onnx_key in files:
        return "onnxruntime", str(files[onnx_key]), f"shipped {model}: its {onnx_key} ONNX export"
    if backend == "onnxruntime":
        raise HdmeError(f"no {onnx_key} ONNX export of '{model}' is shipped; export one with: hdme export onnx")
    if backend == "tensorrt":
        raise HdmeError(f"TensorRT runs engine files; build one for '{model}' with: hdme export trt MODEL.onnx --out MODEL.engine")
    if "safetensors" not in files:
        raise HdmeError(f"no weights of '{model}' are shipped")
    if not _installed("torch"):
        raise HdmeError(f"'{model}' has no ONNX export and torch is not installed; install it with: pip install 'hdme[train]'")
    why = "requested" if backend == "torch" else "no ONNX export shipped"
    return "torch", model, f"shipped {model}: safetensors weights on torch ({why})"


def _precision_matches(asked: str | None, file_precision: str) -> bool:
    """Whether a model file at ``file_precision`` serves a request for ``asked`` (None: any).
    "int8-cpu" (ONNX Runtime's CPU layout) is an INT8 model like "int8" (TensorRT's Q/DQ)."""
    return asked in (None, file_precision.split("-")[0])


def create_backend(model: str | Path | None = None, backend: str = "auto", precision: str | None = None,
                   threads: int = 0, **options) -> Backend:
    """Load ``model`` on ``backend``. ``threads``: CPU threads for inference (0: the engine's
    default); ``options`` go to the chosen engine's constructor."""
    name, target, why = resolve_model(model, backend, precision)
    if name == "onnxruntime":
        from hdme.runtime.backends.onnxruntime import OnnxRuntimeBackend

        if precision in ("fp16", "int8") and options.get("provider") == "tensorrt":
            options.setdefault(precision, True)
        engine = OnnxRuntimeBackend(target, intra_op_threads=threads, **options)
        if not _precision_matches(precision, engine.precision):
            raise HdmeError(f"{target} is a {engine.precision} model; ONNX Runtime runs a model at its file's precision")
    elif name == "tensorrt":
        from hdme.runtime.backends.tensorrt import TensorRTBackend

        engine = TensorRTBackend(target, **options)
        if not _precision_matches(precision, engine.precision):
            raise HdmeError(f"{target} is a {engine.precision} engine, not {precision}")
    else:
        from hdme.runtime.backends.torch import TorchBackend

        engine = TorchBackend(target, precision=precision or "fp32", threads=threads, **options)
    engine.selection = f"{'auto' if backend == 'auto' else 'requested'}: {engine.describe()} ({why})"
    log.info("backend %s", engine.selection)
    return engine
