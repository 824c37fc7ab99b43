"""Inference engines behind one interface: the one registry of them, and the choice of one for a model.

A model is a shipped name ("hdme-edge") or a model file of a kind ``hdme.contract`` knows. Each
engine in ``ENGINES`` names the kinds it runs; ``create_backend(model, "auto")`` takes, among the
installed engines that run the model, the fastest one for this machine, and records which and why
in ``backend.selection``. Adding an engine is one module here with its Backend class and one entry
in ``ENGINES``.

This module imports neither numpy nor an engine, so that the command line can list the engines.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hdme.contract import MODEL_SUFFIXES, PRECISIONS, ArtifactKind, artifact_kind
from hdme.errors import HdmeError
from hdme.weights import DEFAULT_MODEL, is_file_argument

if TYPE_CHECKING:
    from hdme.runtime.backends.base import Backend

log = logging.getLogger("hdme.runtime")

__all__ = ["Backend", "InferTimes", "PRECISIONS", "ENGINES", "BACKEND_NAMES", "Engine", "available_backends",
           "create_backend", "model_file_kind", "resolve_model", "shipped_artifacts"]


def module_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _ort_on_gpu() -> str | None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return "NVIDIA GPU: ONNX Runtime runs it with CUDA"
    return None


def _x86_cpu() -> str | None:
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
        return "x86 CPU: OpenVINO is the fastest CPU engine installed"
    return None


def _openvino_precisions() -> tuple[str, ...]:
    from hdme.runtime.backends.openvino import cpu_precisions

    return cpu_precisions()


@dataclass(frozen=True)
class Engine:
    """One inference engine.

    ``runs``: the artifact kinds (hdme.contract) it loads; ``requires``: modules that must be
    importable (each entry: alternatives separated by '|'); ``extra``: the install extra that brings
    them; ``preferred``: why ``auto`` takes it on this machine, or None; ``options``: keyword
    options its constructor takes beyond the model, precision and threads; ``precisions``: those it
    can run an FP32 model at here; ``hint``: how to make a file it runs."""

    name: str
    module: str
    class_name: str
    runs: tuple[str, ...]
    requires: tuple[str, ...]
    extra: str
    preferred: Callable[[], str | None] = lambda: None
    options: frozenset[str] = field(default_factory=frozenset)
    precisions: Callable[[], tuple[str, ...]] = lambda: ("fp32",)
    hint: str = ""

    def installed(self) -> bool:
        return all(any(module_installed(m) for m in alternatives.split("|")) for alternatives in self.requires)

    def backend_class(self) -> type[Backend]:
        return getattr(importlib.import_module(self.module), self.class_name)


# In order of preference where several engines run a model and none says it is preferred here.
ENGINES = (
    Engine("tensorrt", "hdme.runtime.backends.tensorrt", "TensorRTBackend", ("tensorrt-engine",),
           ("tensorrt", "cuda|pycuda"), "trt", options=frozenset({"device_id", "cuda_graphs", "cuda_api"}),
           hint="build an engine with: hdme export trt MODEL.onnx --out MODEL.engine"),
    Engine("onnxruntime", "hdme.runtime.backends.onnxruntime", "OnnxRuntimeBackend", ("onnx",), ("onnxruntime",), "",
           preferred=_ort_on_gpu,
           options=frozenset({"provider", "inter_op_threads", "graph_optimization", "fp16", "int8", "cache_dir", "device_id"}),
           hint="export one with: hdme export onnx"),
    Engine("openvino", "hdme.runtime.backends.openvino", "OpenVINOBackend", ("onnx", "openvino-ir"), ("openvino",),
           "openvino", preferred=_x86_cpu, options=frozenset({"device"}), precisions=_openvino_precisions,
           hint="export an IR with: hdme export openvino MODEL"),
    Engine("torch", "hdme.runtime.backends.torch", "TorchBackend", ("safetensors",), ("torch",), "train",
           options=frozenset({"device", "cuda_graphs"})),
)
ENGINE_NAMES = {engine.name: engine for engine in ENGINES}
BACKEND_NAMES = ("auto", *ENGINE_NAMES)


def __getattr__(name: str):
    # The interface loads numpy: import it when asked for, not when the command line lists engines.
    if name in ("Backend", "InferTimes"):
        from hdme.runtime.backends import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available_backends() -> list[str]:
    """Engines that can run here (without importing them)."""
    return [engine.name for engine in ENGINES if engine.installed()]


def _engine(name: str) -> Engine:
    if name not in ENGINE_NAMES:
        raise HdmeError(f"unknown backend '{name}' (choose from {', '.join(BACKEND_NAMES)})")
    return ENGINE_NAMES[name]


def shipped_artifacts(model: str, precision: str | None = None) -> dict[str, Path]:
    """Artifact kind → the file of a shipped model an engine of that kind would load."""
    from hdme.weights import find_weights

    files = find_weights(model)
    onnx_key = "int8-cpu" if precision == "int8" else "onnx"
    shipped = {"onnx": files.get(onnx_key), "safetensors": files.get("safetensors")}
    return {kind: path for kind, path in shipped.items() if path is not None}


def _choose(candidates: list[tuple[Engine, str]], options: dict) -> tuple[Engine, str, str]:
    """(engine, target, why) among (engine, target) pairs: the first that says it is preferred
    here, else the first; only engines taking every given option compete."""
    fitting = [(e, t) for e, t in candidates if set(options) <= e.options]
    if not fitting:
        names = ", ".join(sorted(options))
        raise HdmeError(f"no engine that runs it takes the option(s) {names} "
                        f"({', '.join(e.name for e, _ in candidates)} can run it)")
    for engine, target in fitting:
        reason = engine.preferred()
        if reason:
            return engine, target, reason
    engine, target = fitting[0]
    return engine, target, f"the first installed engine that runs it ({', '.join(e.name for e, _ in candidates)})"


def model_file_kind(model: str) -> ArtifactKind | None:
    """The artifact kind of a model argument that names a file, None where it names a shipped model;
    a missing file, a folder or a file of no model kind is an error."""
    if not is_file_argument(model):
        return None
    path = Path(model)
    if not path.exists():
        raise HdmeError(f"{path}: no such model file")
    kind = artifact_kind(path)
    if path.is_dir() or kind is None:
        raise HdmeError(f"{path}: not a model file (expected {', '.join(MODEL_SUFFIXES)} or a shipped model name)")
    return kind


def resolve_model(model: str | Path | None, backend: str = "auto", precision: str | None = None,
                  options: dict | None = None) -> tuple[str, str, str]:
    """(backend name, file or shipped name to load, why) for a model argument. ``options``: the
    engine options given, which ``auto`` only passes to an engine that takes them."""
    if backend != "auto":
        _engine(backend)
    if precision is not None and precision not in PRECISIONS:
        raise HdmeError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    model = str(model) if model is not None else DEFAULT_MODEL
    path = Path(model)
    kind = model_file_kind(model)
    if kind is not None:
        runners = [e for e in ENGINES if kind.name in e.runs]
        if backend != "auto":
            if backend not in (e.name for e in runners):
                raise HdmeError(f"{path}: a {path.suffix} file runs on the {' or '.join(e.name for e in runners)} backend, not {backend}")
            return backend, str(path), f"{path.suffix} file, {backend} requested"
        installed = [(e, str(path)) for e in runners if e.installed()] or [(runners[0], str(path))]
        engine, target, why = _choose(installed, options or {})
        return engine.name, target, f"{path.suffix} file; {why}"

    shipped = shipped_artifacts(model, precision)
    if backend != "auto":
        engine = _engine(backend)
        kind = next((k for k in engine.runs if k in shipped), None)
        if kind is None:
            what = f"{precision} " if precision else ""
            raise HdmeError(f"'{model}' ships no {what}{' or '.join(engine.runs)} file for {backend}; {engine.hint or 'pass a model file'}")
        return backend, model if kind == "safetensors" else str(shipped[kind]), f"shipped {model}: its {shipped[kind].name}"
    candidates = []
    for engine in ENGINES:
        kind = next((k for k in engine.runs if k in shipped), None)
        if kind is not None and engine.installed():
            candidates.append((engine, model if kind == "safetensors" else str(shipped[kind])))
    if not candidates:
        if "safetensors" in shipped:
            raise HdmeError(f"'{model}' has no ONNX export and torch is not installed; install it with: pip install 'hdme[train]'")
        raise HdmeError(f"no engine installed here runs the files of '{model}'")
    engine, target, why = _choose(candidates, options or {})
    return engine.name, target, f"shipped {model}: its {Path(target).name if target != model else 'weights'}; {why}"


def create_backend(model: str | Path | None = None, backend: str = "auto", precision: str | None = None,
                   threads: int = 0, **options) -> Backend:
    """Load ``model`` on ``backend``. ``threads``: CPU threads for inference (0: the engine's
    default); ``options`` go to the chosen engine's constructor."""
    name, target, why = resolve_model(model, backend, precision, options)
    loaded = ENGINE_NAMES[name].backend_class().load(target, precision=precision, threads=threads, **options)
    loaded.selection = f"{'auto' if backend == 'auto' else 'requested'}: {loaded.describe()} ({why})"
    log.info("backend %s", loaded.selection)
    return loaded
