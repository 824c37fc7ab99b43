"""The model contract every stage reads: tensor names, the metadata an exported model carries,
and the kinds of model file with how each records its precision.

- Every model takes ``INPUT_NAME`` (float32 [N,3,H,W] RGB in [0, 1]) and gives ``OUTPUT_NAME``
  (float32 [N,1,H,W] σ / SIGMA_SCALE).
- Exported files carry ``METADATA_KEYS`` in their own metadata: ONNX ``metadata_props``, the
  ``hdme`` section of an OpenVINO IR's ``rt_info``, the JSON sidecar of a TensorRT engine. The
  precision is read from there, never from the file name, which users rename.

Nothing here imports onnx, openvino, TensorRT or torch: the ONNX metadata is read from the
protobuf wire format and the IR's from its XML.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hdme.errors import HdmeError

SIGMA_SCALE = 10.0  # network output × SIGMA_SCALE = σ px
INPUT_NAME = "image"
OUTPUT_NAME = "sigma"
INPUT_DOC = "float32 [N,3,H,W] RGB in [0,1] (8-bit value / 255), any H and W"
OUTPUT_DOC = f"float32 [N,1,H,W] sigma / {SIGMA_SCALE:g}, clamped to [0,1]; sigma = Gaussian PSF std in px"

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# Keys of an exported model's metadata; "precision" is absent from FP32 exports.
METADATA_KEYS = ("hdme_version", "model", "sigma_scale", "multiple", "input", "output", "precision", "int8_target", "calib_sha256")
IR_RT_INFO_SECTION = "hdme"  # rt_info section of an OpenVINO IR that holds METADATA_KEYS


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' → (H, W)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise HdmeError(f"size '{text}': expected HxW, e.g. 480x640") from None
    if h < 1 or w < 1:
        raise HdmeError(f"size '{text}': sides must be positive")
    return h, w


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, payload) of the length-delimited fields of one protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            yield key >> 3, data[pos:pos + size]
            pos += size
        else:
            raise ValueError(f"wire type {wire}")


ONNX_METADATA_FIELD = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {key = 1, value = 2}


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``metadata_props`` of an ONNX file."""
    try:
        props = {}
        for number, payload in _fields(Path(path).read_bytes()):
            if number == ONNX_METADATA_FIELD:
                entry = dict(_fields(payload))
                props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
        return props
    except (ValueError, UnicodeDecodeError) as exc:
        raise HdmeError(f"{path}: not a readable ONNX file ({exc})") from None


def ir_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``hdme`` section of an OpenVINO IR's ``rt_info`` (the .xml of an .xml/.bin pair)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise HdmeError(f"{path}: not a readable OpenVINO IR ({exc})") from None
    section = root.find(f"rt_info/{IR_RT_INFO_SECTION}")
    return {} if section is None else {child.tag: child.get("value", "") for child in section}


def sidecar_metadata(path: str | os.PathLike) -> dict[str, str]:
    from hdme.sidecar import read_sidecar

    return {k: str(v) for k, v in read_sidecar(path).items() if v is not None}


@dataclass(frozen=True)
class ArtifactKind:
    """A kind of model file: its suffixes and how its metadata is read (``None``: it has none)."""

    name: str
    suffixes: tuple[str, ...]
    read_metadata: Callable[[str | os.PathLike], dict[str, str]] | None


ARTIFACT_KINDS = (
    ArtifactKind("onnx", (".onnx",), onnx_metadata),
    ArtifactKind("openvino-ir", (".xml",), ir_metadata),
    ArtifactKind("tensorrt-engine", (".engine", ".plan"), sidecar_metadata),
    ArtifactKind("safetensors", (".safetensors",), None),
)
MODEL_SUFFIXES = tuple(s for kind in ARTIFACT_KINDS for s in kind.suffixes)


def artifact_kind(path: str | os.PathLike) -> ArtifactKind | None:
    suffix = Path(path).suffix.lower()
    return next((kind for kind in ARTIFACT_KINDS if suffix in kind.suffixes), None)


def model_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata a model file carries ({} for weights, which carry none)."""
    kind = artifact_kind(path)
    if kind is None:
        raise HdmeError(f"{path}: not a model file (expected {', '.join(MODEL_SUFFIXES)})")
    if not Path(path).is_file():
        raise HdmeError(f"{path}: no such model file")
    return kind.read_metadata(path) if kind.read_metadata else {}


def model_precision(path: str | os.PathLike) -> str:
    """The precision a model file records in its own metadata; fp32 where it records none."""
    precision = model_metadata(path).get("precision") or "fp32"
    if precision not in PRECISIONS:
        raise HdmeError(f"{path}: records precision '{precision}', not one of {', '.join(PRECISIONS)}")
    return precision
