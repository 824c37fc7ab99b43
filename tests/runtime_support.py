"""Tiny real models and media for the runtime tests (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def tiny_onnx(path: Path, seed: int = 0, multiple: int | None = None, constant: float | None = None) -> Path:
    """A two-layer conv net with the exported models' IO: "image" [N,3,H,W] → "sigma" [N,1,H,W]
    in [0, 1] (sigmoid), dynamic N, H, W. ``constant``: output that value (σ/10) everywhere."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 4).astype(np.float32)
    w2 = rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32)
    b2 = np.zeros(1, np.float32)
    if constant is not None:
        w2[:] = 0.0
        b2[:] = np.log(constant / (1.0 - constant))  # sigmoid⁻¹
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Sigmoid", ["c2"], ["sigma"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if multiple:
        helper.set_model_props(model, {"multiple": str(multiple)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def textured_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image with detail at several scales (so a model's output varies)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.0 + seed % 3)


def write_video(path: Path, frames: int, h: int = 48, w: int = 64, fps: float = 10.0) -> Path:
    """A short MJPG/mp4v video whose frames differ (frame index drawn as a bar)."""
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for i in range(frames):
        frame = cv2.cvtColor(textured_rgb(h, w, seed=i), cv2.COLOR_RGB2BGR)
        frame[:4, : (i * 3) % w] = 255
        writer.write(frame)
    writer.release()
    return path
