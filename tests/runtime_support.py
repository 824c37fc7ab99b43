"""Tiny real models and media for the runtime tests (no torch needed)."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from hdme.runtime.sources import Frame, Source


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


def shaped_onnx(path: Path, input_shape, output_channels: int) -> Path:
    """An ONNX model with the contract's names but the given input shape and output channels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    in_ch = input_shape[1]
    weight = numpy_helper.from_array(np.full((output_channels, in_ch, 1, 1), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["sigma"])], "bad",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("sigma", TensorProto.FLOAT, [input_shape[0], output_channels, *input_shape[2:]])],
        [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
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



class PacedSource(Source):
    """A camera-like source: ``images`` (BGR) over and over at ``fps`` frames a second (None: as
    fast as they are read), each frame's number written into its first pixels, until ``stop()``
    or ``frames`` frames."""

    def __init__(self, images: list[np.ndarray], fps: float | None = 30.0, frames: int | None = None) -> None:
        super().__init__(f"paced source ({fps or 'unpaced'} FPS)")
        self.images, self.period, self.frames = images, (1.0 / fps if fps else 0.0), frames
        self.count = 0
        self._stopped = threading.Event()
        self._next_time: float | None = None

    def read(self) -> Frame | None:
        if self._stopped.is_set() or (self.frames is not None and self.count >= self.frames):
            return None
        now = time.perf_counter()
        self._next_time = now if self._next_time is None else max(self._next_time + self.period, now)
        if self._stopped.wait(max(0.0, self._next_time - now)):
            return None
        image = self.images[self.count % len(self.images)].copy()
        image[0, :8] = self.count % 256
        self.count += 1
        return Frame(self.count - 1, image, f"{self.count - 1:06d}", time.perf_counter())

    def stop(self) -> None:
        self._stopped.set()

    def close(self) -> None:
        self.stop()


@contextlib.contextmanager
def served_pipeline(source: Source, backend, max_fps: float, size: tuple[int, int] | None = None):
    """A pipeline running ``source`` through ``backend`` (the model at ``size``) in a thread,
    served live on an ephemeral port of 127.0.0.1; yields (server, view). Closes the source and
    the backend on exit."""
    from hdme.runtime.live import LiveServer, LiveView
    from hdme.runtime.pipeline import StreamPipeline

    view = LiveView(backend, max_fps=max_fps)
    pipeline = StreamPipeline(source, backend, [view], size=size)
    view.attach(pipeline)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    with LiveServer(view, "127.0.0.1", 0) as server:
        runner.start()
        try:
            yield server, view
        finally:
            source.close()
            runner.join(timeout=10)
            backend.close()
