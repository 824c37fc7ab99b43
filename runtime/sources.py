"""Frame sources for ``hdme run``: cameras, video files, network streams, GStreamer, images.

Files yield every frame in order. Live sources (cameras, RTSP/HTTP, GStreamer) are read by a
capture thread that keeps only the latest frame, so a slow consumer never builds up lag: frames
it could not take in time are dropped and counted. A live source that stops delivering is
reopened with exponential back-off, and one that is not up yet when the run starts (a camera
plugged in later, a server still starting) is waited for the same way.
"""

from __future__ import annotations

import abc
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from hdme.errors import HdmeError
from hdme.images import is_image_file, list_images, read_image

URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
# Low-latency FFmpeg demuxing for network streams: TCP (no smeared frames from lost UDP packets),
# no input buffering, no reordering delay. A user's own setting takes precedence.
FFMPEG_LOW_LATENCY = "rtsp_transport;tcp|fflags;nobuffer|flags;low_delay|max_delay;0"
GST_APPSINK = "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
MAX_BAD_FRAMES = 25  # consecutive unreadable frames before a file is considered ended


@dataclass
class Frame:
    index: int
    image: np.ndarray  # BGR uint8 H×W×3
    name: str
    t_capture: float  # time.perf_counter() when the frame was taken


class Source(abc.ABC):
    live: bool = False
    fps: float | None = None

    def __init__(self, description: str) -> None:
        self.description = description
        self.dropped = 0
        self.corrupt = 0

    @abc.abstractmethod
    def read(self) -> Frame | None:
        """The next frame, or None at the end of the source."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def classify_source(spec: str) -> str:
    """'camera' | 'url' | 'gstreamer' | 'folder' | 'image' | 'video' for a SOURCE argument."""
    spec = str(spec).strip()
    if spec.isdigit():
        return "camera"
    if "!" in spec:
        return "gstreamer"
    if re.match(rf"^({'|'.join(URL_SCHEMES)})://", spec, re.IGNORECASE):
        return "url"
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise HdmeError(f"{spec}: no such file, folder, camera index or stream URL (GStreamer pipelines join elements with '!')")
    return "image" if is_image_file(path) else "video"


class ImageListSource(Source):
    """Image files in order; unreadable ones are skipped and counted."""

    def __init__(self, paths: list[Path], description: str, on_message: Callable[[str], None] = print) -> None:
        super().__init__(description)
        if not paths:
            raise HdmeError(f"{description}: no images found")
        self.paths = list(paths)
        self.on_message = on_message
        self._next = 0

    def read(self) -> Frame | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            try:
                rgb = read_image(path)
            except HdmeError as exc:
                self.corrupt += 1
                self.on_message(f"skipped: {exc}")
                continue
            return Frame(self._next - 1, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), path.stem, time.perf_counter())
        return None


class VideoFileSource(Source):
    """Every frame of a video file, in order. A frame that fails to decode is skipped and
    counted; a truncated file ends cleanly where its readable data ends."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.cap = open_capture(str(path), cv2.CAP_ANY)
        if not self.cap.isOpened():
            raise HdmeError(f"{path}: not a readable video (corrupt, truncated before its header, or an unsupported codec)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else None
        self._index = 0

    def read(self) -> Frame | None:
        bad = 0
        while self.cap is not None and bad < MAX_BAD_FRAMES:
            t = time.perf_counter()
            if not self.cap.grab():
                return None
            ok, image = self.cap.retrieve()
            index = self._index
            self._index += 1
            if ok and image is not None and image.size:
                return Frame(index, image, f"{index:06d}", t)
            bad += 1
            self.corrupt += 1
        return None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class LiveSource(Source):
    """A capture thread over any OpenCV-like capture (``read() -> (ok, frame)``, ``release()``)
    made by ``opener`` (None when it cannot open). Keeps only the latest frame; connects, and
    reconnects when reads fail ``fail_reads`` times in a row, or once after waiting ``stall_s`` or
    longer (a stream that went silent: FFmpeg gives up on one after 30 s, and three such reads took
    90 s to notice), with back-off (``backoff`` s doubling up to ``max_backoff``); gives up after
    ``max_reconnects`` attempts in a row (None: never)."""

    live = True
    close_timeout = 5.0  # s that close() waits for the capture thread; a slower open still ends with a release

    def __init__(self, opener: Callable[[], object | None], description: str,
                 on_message: Callable[[str], None] = print, backoff: float = 0.5, max_backoff: float = 8.0,
                 fail_reads: int = 3, max_reconnects: int | None = None, stall_s: float = 5.0) -> None:
        super().__init__(description)
        self.opener = opener
        self.on_message = on_message
        self.backoff, self.max_backoff = backoff, max_backoff
        self.fail_reads, self.stall_s = fail_reads, stall_s
        self.max_reconnects = max_reconnects
        self.reconnects = 0
        self._cap = None
        self._ever_opened = False
        self._use(opener())
        self._latest: Frame | None = None
        self._captured = 0
        self._ended = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._capture_loop, name="hdme-capture", daemon=True)
        self._thread.start()

    def _use(self, cap) -> bool:
        """Take an opened capture (None: not opened) and the frame rate it reports."""
        if cap is None:
            return False
        self._cap, self._ever_opened = cap, True
        fps = getattr(cap, "get", lambda _: 0)(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else self.fps
        return True

    def _reopen(self) -> bool:
        first = not self._ever_opened
        state, retry, done = (("not available yet", "connecting", "connected") if first
                              else ("lost", "reconnecting", "reconnected"))
        delay = self.backoff
        attempts = 0
        while not self._stop.is_set():
            if self.max_reconnects is not None and attempts >= self.max_reconnects:
                self.on_message(f"{self.description}: gave up after {attempts} attempts to connect")
                return False
            attempts += 1
            self.on_message(f"{self.description}: {state}, {retry} in {delay:.3g} s (attempt {attempts})")
            if self._stop.wait(delay):
                return False
            if self._use(self.opener()):
                self.reconnects += not first
                self.on_message(f"{self.description}: {done}")
                return True
            delay = min(delay * 2, self.max_backoff)
        return False

    def _capture_loop(self) -> None:
        try:
            self._capture_frames()
        except Exception as exc:  # a capture library failing must end the source, not hang its reader
            self.on_message(f"{self.description}: capture failed ({exc})")
        finally:
            # This thread owns the capture: an open still in progress when close() gave up waiting
            # ends here too, and a device is never released while another thread reads it.
            if self._cap is not None:
                self._cap.release()
                self._cap = None
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _capture_frames(self) -> None:
        if self._cap is None and not self._reopen():
            return
        failures = 0
        while not self._stop.is_set():
            started = time.perf_counter()
            ok, image = self._cap.read()
            if not ok or image is None or not getattr(image, "size", 0):
                failures += 1
                stalled = time.perf_counter() - started >= self.stall_s
                if failures < self.fail_reads and not stalled:
                    self.corrupt += 1
                    continue
                self._cap.release()
                self._cap = None
                failures = 0
                if not self._reopen():
                    break
                continue
            failures = 0
            frame = Frame(self._captured, image, f"{self._captured:06d}", time.perf_counter())
            self._captured += 1
            with self._cond:
                if self._latest is not None:
                    self.dropped += 1
                self._latest = frame
                self._cond.notify()

    def read(self) -> Frame | None:
        with self._cond:
            while self._latest is None and not self._ended:
                self._cond.wait(0.1)
            frame, self._latest = self._latest, None
            return frame

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=self.close_timeout)
        with self._cond:
            self._ended = True
            self._cond.notify_all()


_capture_open_lock = threading.Lock()


def open_capture(target, api: int, ffmpeg_options: str | None = None) -> cv2.VideoCapture:
    """Every capture hdme opens goes through here. ``ffmpeg_options``: FFmpeg's options for this
    capture only. OpenCV reads them from the environment when a capture opens, so they are set just
    for that moment (unless the user set their own), and no other capture opens meanwhile: a video
    file opened in another thread would take a stream's low-delay flags and lose frames."""
    with _capture_open_lock:
        own = ffmpeg_options is not None and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ
        if own:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = ffmpeg_options
        try:
            return cv2.VideoCapture(target, api)
        finally:
            if own:
                del os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"]


def _cv_opener(target, api: int, ffmpeg_options: str | None = None) -> Callable[[], object | None]:
    def open_live_capture():
        cap = open_capture(target, api, ffmpeg_options)
        if not cap.isOpened():
            cap.release()
            return None
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where the backend honours it: no stale frames queued
        return cap

    return open_live_capture


def gstreamer_pipeline(spec: str) -> str:
    """End a user's pipeline in a BGR appsink that drops stale buffers, unless it has a sink."""
    return spec if "appsink" in spec else f"{spec} ! {GST_APPSINK}"


def open_source(spec: str, on_message: Callable[[str], None] = print, **live_options) -> Source:
    """A Source for a SOURCE argument (see ``classify_source``)."""
    kind = classify_source(spec)
    if kind == "folder":
        return ImageListSource(list_images(spec), spec, on_message)
    if kind == "image":
        return ImageListSource([Path(spec)], spec, on_message)
    if kind == "video":
        return VideoFileSource(Path(spec))
    if kind == "camera":
        return LiveSource(_cv_opener(int(spec), cv2.CAP_ANY), f"camera {spec}", on_message, **live_options)
    if kind == "url":
        return LiveSource(_cv_opener(spec, cv2.CAP_FFMPEG, FFMPEG_LOW_LATENCY), spec, on_message, **live_options)
    if not re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()):
        raise HdmeError("this OpenCV build has no GStreamer support; install an OpenCV built with GStreamer (JetPack's is)")
    return LiveSource(_cv_opener(gstreamer_pipeline(spec), cv2.CAP_GSTREAMER), "GStreamer pipeline", on_message, **live_options)
