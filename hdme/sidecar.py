"""The JSON sidecar written next to every TensorRT engine (``FILE.engine.json``).

An engine only runs on the TensorRT version and GPU architecture it was built for, so the
runtime reads this file (without torch or TensorRT) to refuse a mismatched engine with a
rebuild hint instead of failing inside TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hdme.errors import HdmeError
from hdme.io import write_json

SIDECAR_KEYS = (
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "precision",
    "profile",
    "multiple",
    "onnx_sha256",
    "calib_sha256",
    "hdme_version",
)


def sidecar_path(engine: str | os.PathLike) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sidecar(engine: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write the sidecar of ``engine``; every key of SIDECAR_KEYS must be given (``calib_sha256``
    may be None for engines built without calibration)."""
    missing = [k for k in SIDECAR_KEYS if k not in info]
    if missing:
        raise ValueError(f"sidecar lacks {', '.join(missing)}")
    path = sidecar_path(engine)
    write_json(path, {k: info[k] for k in SIDECAR_KEYS})
    return path


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``engine`` as a dict with exactly SIDECAR_KEYS, or one clear HdmeError."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise HdmeError(f"{engine}: its build record {path.name} is missing; rebuild with 'hdme export trt'")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HdmeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise HdmeError(f"{path}: expected a JSON object")
    missing = [k for k in SIDECAR_KEYS if k not in info]
    if missing:
        raise HdmeError(f"{path}: lacks {', '.join(missing)}; rebuild with 'hdme export trt'")
    return {k: info[k] for k in SIDECAR_KEYS}
