"""A Triton Inference Server model repository entry for an hdme ONNX model or TensorRT engine:
``REPO/NAME/config.pbtxt`` and ``REPO/NAME/1/model.onnx|model.plan``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hdme.errors import HdmeError
from hdme.io import make_folder

MAX_QUEUE_DELAY_US = 100
DEFAULT_MAX_BATCH = 8


def _dims_text(dims: list[int]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _source_shape(model: Path) -> tuple[str, str, int | None, list[int | None], int | None]:
    """(platform, file name, static batch or None, [C, H, W] with None where dynamic, largest
    batch the engine's profile allows or None for ONNX)."""
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        from hdme.export.onnx import input_dims, load_onnx

        n, c, h, w = input_dims(load_onnx(model))
        return "onnxruntime_onnx", "model.onnx", n, [c, h, w], None
    if suffix in (".engine", ".plan"):
        from hdme.sidecar import read_sidecar

        profile = read_sidecar(model)["profile"]
        lo, hi = profile["min"], profile["max"]
        h, w = (lo[i] if lo[i] == hi[i] else None for i in (2, 3))
        return "tensorrt_plan", "model.plan", None, [3, h, w], int(hi[0])
    raise HdmeError(f"{model}: Triton serves .onnx or .engine/.plan files, not '{suffix or 'no extension'}'")


def config_text(name: str, platform: str, max_batch: int, chw: list[int | None], instances: int, fixed_batch: int = 1) -> str:
    """config.pbtxt text; without batching (max_batch 0) the dims include the fixed batch size."""
    c, h, w = (d if d is not None else -1 for d in chw)
    kind = "KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"
    batched = max_batch > 0
    # Triton takes an image format only with exactly 3 dims (C, H, W after the batch it forms).
    image_format = ["    format: FORMAT_NCHW"] if batched else []
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        "  {",
        '    name: "image"',
        "    data_type: TYPE_FP32",
        *image_format,
        f"    dims: {_dims_text(([] if batched else [fixed_batch]) + [c, h, w])}",
        "  }",
        "]",
        "output [",
        "  {",
        '    name: "sigma"',
        "    data_type: TYPE_FP32",
        f"    dims: {_dims_text(([] if batched else [fixed_batch]) + [1, h, w])}",
        "  }",
        "]",
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
    ]
    if max_batch > 1:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}")
    return "\n".join(lines) + "\n"


def write_repository(
    model: str | os.PathLike, repo: str | os.PathLike, name: str | None = None, max_batch: int | None = None, instances: int = 1
) -> Path:
    """Write (or replace) ``repo/name`` for ``model`` (a file, or a shipped model's name, which serves
    its FP32 ONNX); returns that folder. ``max_batch``: the largest batch the server forms (default
    DEFAULT_MAX_BATCH, or an engine profile's largest batch if smaller; 0: no batching)."""
    from hdme.export.triton_schema import parse_config
    from hdme.weights import is_file_argument, shipped_onnx

    model = Path(model) if is_file_argument(str(model)) else shipped_onnx(str(model))
    repo = Path(repo)
    if not model.exists():
        raise HdmeError(f"{model}: no such model file")
    # model.int8.onnx → "model-int8": variants of one network get entries of their own.
    name = name or model.stem.replace(".", "-")
    if not name or "/" in name or name.startswith("."):
        raise HdmeError(f"model name '{name}': use a plain folder name")
    if instances < 1:
        raise HdmeError(f"instances must be at least 1, not {instances}")
    platform, filename, static_batch, shape, profile_max_batch = _source_shape(model)
    if max_batch is None:
        max_batch = min(DEFAULT_MAX_BATCH, profile_max_batch or DEFAULT_MAX_BATCH)
    if profile_max_batch is not None and max_batch > profile_max_batch:
        raise HdmeError(f"max batch {max_batch} exceeds the engine profile's largest batch {profile_max_batch}")
    if static_batch is not None:
        max_batch = 0  # a fixed batch dimension cannot be batched by the server
    if max_batch < 0:
        raise HdmeError(f"max batch must be 0 (no batching) or more, not {max_batch}")
    text = config_text(name, platform, max_batch, shape, instances, static_batch or 1)
    parse_config(text)

    make_folder(repo)
    target = repo / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (staging / "1").mkdir()
        shutil.copyfile(model, staging / "1" / filename)
        (staging / "config.pbtxt").write_text(text)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=repo))
            os.replace(target, old / name)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target
