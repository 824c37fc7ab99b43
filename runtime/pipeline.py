"""capture → preprocess → infer → postprocess → sinks, overlapped.

A reader thread captures and preprocesses into a ring of preallocated input buffers, an
inference thread runs the backend, and the calling thread postprocesses and feeds the sinks
(windows must be driven from the main thread on some platforms). Bounded queues between them
give back-pressure for files (every frame, in order) and keep at most a few frames in flight.
A live frame is read only once the model is free and its last result has gone to the sinks, so
it never waits behind older frames: the model works on it while the sinks take the previous
one, and reading and preprocessing are the only steps not overlapped.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from hdme.conventions import output_to_sigma, rescale_sigma
from hdme.errors import HdmeError
from hdme.runtime.backends import Backend
from hdme.contract import parse_size as parse_hw
from hdme.conventions import rgb_to_input
from hdme.runtime.predict import MIN_SIDE, check_tta, infer_mirrored, pad_to_multiple
from hdme.runtime.sinks import Sink
from hdme.runtime.sources import Frame, Source
from hdme.runtime.stats import latency_stats

STAGES = ("capture", "preprocess", "infer", "postprocess", "sinks", "end-to-end")
# Latency samples kept per stage: a stream that runs for days must not grow without bound, so its
# summary speaks of the last STATS_WINDOW frames (13 minutes at 25 FPS).
STATS_WINDOW = 20_000
_END = object()


@dataclass
class RunStats:
    frames: int = 0
    dropped: int = 0
    corrupt: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by_sink: bool = False  # a sink asked to stop (q or Esc in the display window)
    stage_ms: dict[str, collections.deque] = field(
        default_factory=lambda: {s: collections.deque(maxlen=STATS_WINDOW) for s in STAGES})

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {
            "frames": self.frames, "dropped": self.dropped, "corrupt": self.corrupt,
            "seconds": self.seconds, "fps": self.fps, "interrupted": self.interrupted,
            "stages": {s: latency_stats(v) for s, v in self.stage_ms.items() if v},
        }


@dataclass
class _Item:
    frame: Frame
    x: np.ndarray
    work_hw: tuple[int, int]
    ms: dict[str, float]
    y: np.ndarray | None = None


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'HxW' → (H, W) for a model input, None for none."""
    if not text:
        return None
    h, w = parse_hw(text)
    if min(h, w) < MIN_SIDE:
        raise HdmeError(f"size '{text}' is below the {MIN_SIDE} px the network needs")
    return h, w


class StreamPipeline:
    """Run ``source`` through ``backend`` into ``sinks``. ``size`` (H, W): resize frames to it
    for the model, σ is mapped back to the frame's pixels. ``max_frames``: stop after so many.
    ``tta``: mirrored views averaged per frame, as in ``DefocusPredictor`` (one pass by default).
    ``temporal``: called with each frame and its σ map, returns the map the sinks get (e.g. a
    ``TemporalFilter``)."""

    def __init__(self, source: Source, backend: Backend, sinks: list[Sink] = (), size: tuple[int, int] | None = None,
                 max_frames: int | None = None, queue_depth: int = 2, tta: str = "none",
                 temporal: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise HdmeError(f"max_frames must be at least 1, not {max_frames}")
        self.source, self.backend, self.sinks = source, backend, list(sinks)
        self.temporal = temporal
        self.size, self.max_frames, self.tta = size, max_frames, check_tta(tta)
        self.q_in: queue.Queue = queue.Queue(queue_depth)
        self.q_out: queue.Queue = queue.Queue(queue_depth)
        # Frames in flight at most: both queues, one in each thread, one being built.
        self.ring_len = 2 * queue_depth + 4
        self._ring: list[np.ndarray] = []
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.stats = RunStats()  # filled as frames pass, so it can be read while the run goes on

    def _buffer(self, index: int, h: int, w: int) -> np.ndarray:
        if not self._ring or self._ring[0].shape[2:] != (h, w):
            self._ring = [np.empty((1, 3, h, w), np.float32) for _ in range(self.ring_len)]
        return self._ring[index % self.ring_len]

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _preprocess(self, frame: Frame, count: int) -> _Item:
        t0 = time.perf_counter()
        image = frame.image
        if self.size is not None and image.shape[:2] != self.size:
            interp = cv2.INTER_AREA if self.size[0] < image.shape[0] else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.size[1], self.size[0]), interpolation=interp)
        h, w = image.shape[:2]
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        x = pad_to_multiple(rgb_to_input(rgb, self._buffer(count, h, w)), self.backend.multiple)
        return _Item(frame, x, (h, w), {"preprocess": (time.perf_counter() - t0) * 1e3})

    def _reader(self) -> None:
        count = 0
        try:
            while not self._stop.is_set() and (self.max_frames is None or count < self.max_frames):
                if self.source.live:
                    self._wait_until_taken(self.q_in)
                    self._wait_until_taken(self.q_out)
                t0 = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    break
                capture_ms = (time.perf_counter() - t0) * 1e3
                item = self._preprocess(frame, count)
                item.ms["capture"] = capture_ms
                count += 1
                if not self._put(self.q_in, item):
                    return
        except BaseException as exc:  # surfaced in the main thread
            self._error = exc
        self._put(self.q_in, _END)

    def _wait_until_taken(self, q: queue.Queue) -> None:
        """Wait until every item put into ``q`` has been taken on by the next stage. A live frame
        is read only when the model and the sinks are free: queued behind busy ones, it would age
        by one inference or sink call per place in the queues, while the source's latest-frame
        slot drops what they have no time for."""
        with q.all_tasks_done:
            while q.unfinished_tasks and not self._stop.is_set():
                q.all_tasks_done.wait(0.1)

    def _inferer(self) -> None:
        try:
            while True:
                item = self._get(self.q_in)
                if item is _END:
                    break
                t0 = time.perf_counter()
                item.y = infer_mirrored(self.backend, item.x, item.work_hw, self.tta)
                item.ms["infer"] = (time.perf_counter() - t0) * 1e3
                if not self._put(self.q_out, item):
                    return
                self.q_in.task_done()  # once it is in the next queue: a frame is always counted somewhere
        except BaseException as exc:
            self._error = exc
        self._put(self.q_out, _END)

    def _postprocess(self, item: _Item) -> np.ndarray:
        h, w = item.work_hw
        sigma = rescale_sigma(output_to_sigma(item.y[0, 0]), (h, w), item.frame.image.shape[:2])
        return sigma if self.temporal is None else self.temporal(item.frame.image, sigma)

    def run(self) -> RunStats:
        stats = self.stats
        threads = [threading.Thread(target=self._reader, name="hdme-read", daemon=True),
                   threading.Thread(target=self._inferer, name="hdme-infer", daemon=True)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        try:
            while True:
                item = self._get(self.q_out)
                if item is _END:
                    break
                self.q_out.task_done()
                t0 = time.perf_counter()
                sigma = self._postprocess(item)
                t1 = time.perf_counter()
                keep_going = all([sink.write(item.frame.image, sigma, item.frame.name) for sink in self.sinks])
                t2 = time.perf_counter()
                item.ms.update(postprocess=(t1 - t0) * 1e3, sinks=(t2 - t1) * 1e3)
                item.ms["end-to-end"] = (t2 - item.frame.t_capture) * 1e3
                for stage, ms in item.ms.items():
                    stats.stage_ms[stage].append(ms)
                stats.frames += 1
                if not keep_going:
                    stats.stopped_by_sink = True
                    break
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            stats.seconds = time.perf_counter() - start
            self._stop.set()
            if self.source.live:  # unblocks a reader waiting for a frame; the capture thread owns the device
                self.source.close()
            for t in threads:
                t.join(timeout=5)
            # A file is closed only after the reader stopped: OpenCV captures must not be
            # released while another thread decodes from them.
            self.source.close()
            for sink in self.sinks:
                sink.close()
        stats.dropped, stats.corrupt = self.source.dropped, self.source.corrupt
        if self._error is not None:
            raise self._error
        return stats
