"""What this machine can run (``hdme doctor``): each inference engine with its version and the
precisions it runs here, the NVIDIA driver and the CUDA libraries TensorRT's buffers use, and one
line that fixes each mismatch.

Engines are probed by the functions listed in PROBES, one per engine of the registry
(``hdme.runtime.backends.ENGINES``, in its order): adding an engine is one probe and one entry there. Nothing here needs a GPU; a probe that finds none says so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass

from hdme.runtime.backends import module_installed


@dataclass(frozen=True)
class Finding:
    """One row of the report: ``runs`` lists what works (empty when nothing does), ``fix`` is the
    one line that repairs a problem (None when there is none)."""

    name: str
    version: str
    runs: str
    fix: str | None = None


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def cuda_driver_version() -> tuple[int, int] | None:
    """The newest CUDA (major, minor) the installed NVIDIA driver supports, or None without one.
    Asked of the driver library itself, so it works with no CUDA Python package installed."""
    import ctypes

    for library in ("libcuda.so.1", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(library)
        except OSError:
            continue
        version = ctypes.c_int()
        if driver.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return version.value // 1000, version.value % 1000 // 10
    return None


# What a CUDA library runs on a machine without an NVIDIA driver. Not a fix: a CPU machine with the
# GPU extras installed is not broken, and no command there would make them run.
NO_GPU = "nothing: needs an NVIDIA GPU and driver"


def cuda_mismatch(library: str, built_for: int | None, driver: tuple[int, int], pin: str) -> str | None:
    """The fix when ``library``, built for CUDA major ``built_for``, cannot run under ``driver``.
    A driver runs the CUDA majors up to its own, never a newer one; ``pin`` is the pip argument
    that installs the library's build for the driver's major, with {major} and {next} filled in."""
    if built_for is not None and built_for > driver[0]:
        major = driver[0]
        return (
            f"{library} is built for CUDA {built_for} but the driver supports CUDA {major}.{driver[1]}: "
            f"pip install {pin.format(major=major, next=major + 1)}"
        )
    return None


def tensorrt_cuda_major() -> int | None:
    """The CUDA major of pip's TensorRT (tensorrt-cu12, tensorrt-cu13...); None for TensorRT from
    a system package (JetPack), which matches the system's CUDA."""
    for dist in importlib.metadata.distributions():
        match = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_].*)?", (dist.metadata["Name"] or "").lower())
        if match:
            return int(match.group(1))
    return None


def _onnxruntime(driver: tuple[int, int] | None) -> Finding:
    import onnxruntime as ort

    from hdme.runtime.backends.onnxruntime import PROVIDERS

    available = set(ort.get_available_providers())
    # fp16 and Q/DQ int8 files run on every provider; the CPU is fastest with the int8-cpu layout.
    runs = [f"{short}: fp32 fp16 int8" for short, full in PROVIDERS.items() if full in available]
    fix = None
    if driver is not None and not available & {PROVIDERS["cuda"], PROVIDERS["tensorrt"]}:
        fix = "this build runs on the CPU only; for the GPU: pip uninstall onnxruntime && pip install onnxruntime-gpu"
    return Finding("onnxruntime", ort.__version__, "; ".join(reversed(runs)), fix)


def _extra(engine: str) -> str:
    """The pip requirement that installs an engine: the extra its registry entry names."""
    from hdme.runtime.backends import ENGINE_NAMES

    return f"'hdme[{ENGINE_NAMES[engine].extra}]'"


def _driver_too_old(driver: tuple[int, int]) -> str:
    return f"the driver supports CUDA {driver[0]}.{driver[1]}; TensorRT 10 and later need CUDA 12: update the NVIDIA driver"


def _tensorrt(driver: tuple[int, int] | None) -> Finding:
    if not module_installed("tensorrt"):
        if driver is None:
            return Finding("tensorrt", "not installed", NO_GPU)
        if driver[0] < 12:
            return Finding("tensorrt", "not installed", "", _driver_too_old(driver))
        return Finding("tensorrt", "not installed", "", f"pip install 'hdme[trt-cu{min(driver[0], 13)}]' (on JetPack, TensorRT comes with the image)")
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # installed, but its libraries do not load
        return Finding("tensorrt", _version("tensorrt") or "?", "", f"TensorRT does not load ({exc}); reinstall: pip install {_extra('tensorrt')}")
    if driver is None:
        return Finding("tensorrt", trt.__version__, NO_GPU)
    major = _major(trt.__version__)
    # TensorRT 11 builds reduced precision only from typed ONNX (hdme export quantize); 10 also
    # from FP32 with the builder flags.
    runs = "fp32 fp16 int8" + (" (fp16/int8 from quantised ONNX only)" if major and major >= 11 else "")
    if driver[0] < 12:  # no TensorRT build of ours runs there: no extra to name
        fix = _driver_too_old(driver)
    else:
        fix = cuda_mismatch("TensorRT", tensorrt_cuda_major(), driver, "'hdme[trt-cu{major}]'")
    if fix is None and not (module_installed("cuda") or module_installed("pycuda")):
        fix = "TensorRT's buffers need cuda-python or PyCUDA: pip install 'cuda-python>=12,<13' (CUDA 12)"
    return Finding("tensorrt", trt.__version__, runs if fix is None else "", fix)


def _torch(driver: tuple[int, int] | None) -> Finding:
    if not module_installed("torch"):
        return Finding("torch", "not installed", "", f"for .safetensors weights: pip install {_extra('torch')}")
    import torch

    runs = ["cpu: fp32"]
    fix = None
    if torch.cuda.is_available():
        runs.insert(0, "cuda: fp32 fp16" + (" bf16" if torch.cuda.is_bf16_supported() else ""))
    elif driver is not None:
        fix = f"torch {torch.__version__} cannot use the GPU (built for CUDA {torch.version.cuda or 'none'}); install a CUDA build of torch"
    return Finding("torch", torch.__version__, "; ".join(runs), fix)


def _openvino(driver: tuple[int, int] | None) -> Finding:
    from hdme.runtime.backends import ENGINE_NAMES

    if not module_installed("openvino"):
        return Finding("openvino", "not installed", "", f"for the fastest x86 CPU engine: pip install {_extra('openvino')}")
    import openvino

    # An FP32 model at the precisions the CPU computes; INT8 files (ONNX Q/DQ or an IR made from one) run everywhere.
    return Finding("openvino", openvino.__version__, "cpu: " + " ".join((*ENGINE_NAMES["openvino"].precisions(), "int8")))


# One probe per engine of the registry, in its order; each takes the driver's CUDA version.
PROBES = {"tensorrt": _tensorrt, "onnxruntime": _onnxruntime, "openvino": _openvino, "torch": _torch}


def cuda_findings(driver: tuple[int, int] | None) -> list[Finding]:
    """The NVIDIA driver and the CUDA libraries TensorRT's buffers use (either one suffices)."""
    rows = [Finding("NVIDIA driver", f"CUDA {driver[0]}.{driver[1]}" if driver else "none", "")]
    for name, library, version, built_for, pin, runs in (
        ("cuda-python", "cuda-python", _version("cuda-python", "cuda-bindings"), True, "'cuda-python>={major},<{next}'",
         "TensorRT buffers, CUDA graphs"),
        ("pycuda", "PyCUDA", _version("pycuda"), False, "", "TensorRT buffers (no CUDA graphs)"),
    ):
        if not version:
            continue
        if driver is None:
            rows.append(Finding(name, version, NO_GPU))
            continue
        fix = cuda_mismatch(library, _major(version) if built_for else None, driver, pin)
        rows.append(Finding(name, version, "" if fix else runs, fix))
    return rows


def diagnose() -> list[Finding]:
    driver = cuda_driver_version()
    return [*cuda_findings(driver), *(probe(driver) for probe in PROBES.values())]
