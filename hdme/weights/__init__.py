"""Models that ship inside hdme: weights (safetensors), their ONNX exports and model cards.

``find_weights(name)`` resolves a shipped model name to its files without importing torch, so
the runtime can locate the ONNX export and the trainer the safetensors.
"""

from __future__ import annotations

from pathlib import Path

from hdme.errors import HdmeError

WEIGHTS_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL = "hdme-edge"


def is_file_argument(model: str) -> bool:
    """Whether a model argument names a file (it has an extension, a folder or exists) rather than a
    shipped model, so that a missing or wrong file is reported as such, not as an unknown name."""
    path = Path(model)
    return bool(path.suffix) or path.parent != Path(".") or path.exists()


def shipped_models() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def find_weights(name: str = DEFAULT_MODEL) -> dict[str, Path]:
    """Files of a shipped model: ``safetensors``, ``card`` (JSON) and, where exported, ``onnx``
    and ``int8-cpu`` (the ONNX quantised for CPUs)."""
    files = {
        "safetensors": WEIGHTS_DIR / f"{name}.safetensors",
        "card": WEIGHTS_DIR / f"{name}.json",
        "onnx": WEIGHTS_DIR / f"{name}.onnx",
        "int8-cpu": WEIGHTS_DIR / f"{name}.int8-cpu.onnx",
    }
    found = {k: v for k, v in files.items() if v.is_file()}
    if not found:
        have = ", ".join(shipped_models()) or "none"
        raise HdmeError(f"no shipped model named '{name}' (shipped: {have}); pass a weights or ONNX file instead")
    return found


def shipped_onnx(name: str) -> Path:
    """The FP32 ONNX export of a shipped model."""
    files = find_weights(name)
    if "onnx" not in files:
        raise HdmeError(f"'{name}' ships no ONNX export; make one with: hdme export onnx --model {name}")
    return files["onnx"]
