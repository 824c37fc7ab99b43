"""Where ``hdme run`` sends its σ maps: a window, a video file, a folder of maps, or nowhere."""

from __future__ import annotations

import abc
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from hdme.conventions import save_sigma_map, side_by_side
from hdme.errors import HdmeError
from hdme.images import make_prediction_folder
from hdme.io import temp_path_beside

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
MAP_FORMATS = ("png", "npy")


class Sink(abc.ABC):
    @abc.abstractmethod
    def write(self, frame_bgr: np.ndarray, sigma: np.ndarray, name: str) -> bool:
        """Consume one frame and its σ px map; False asks the pipeline to stop."""

    def close(self) -> None:
        pass


class DisplaySink(Sink):
    """A window: frame | colour map on the fixed 0–10 px scale | scale bar, with live FPS.
    q or Esc closes it and stops the run."""

    def __init__(self, title: str = "hdme") -> None:
        self.title = title
        # Without a display server, OpenCV's Qt/GTK windows abort the whole process.
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise HdmeError("a display window needs a desktop session (no DISPLAY is set); save a video instead")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise HdmeError("--display needs a desktop session and an OpenCV built with GUI support "
                            "(opencv-python, not opencv-python-headless)") from None
        self._last = None
        self._fps = 0.0

    def write(self, frame_bgr, sigma, name):
        now = time.perf_counter()
        if self._last is not None:
            instant = 1.0 / max(now - self._last, 1e-6)
            self._fps = instant if self._fps == 0 else 0.9 * self._fps + 0.1 * instant
        self._last = now
        picture = side_by_side(frame_bgr, sigma)
        cv2.putText(picture, f"{self._fps:5.1f} FPS", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2, cv2.LINE_AA)
        cv2.imshow(self.title, picture)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self):
        cv2.destroyWindow(self.title)


class VideoSink(Sink):
    """The side-by-side picture as a video. Frames go to a temporary file beside the target that
    is renamed over it on close, so the target is always a complete, playable file, also after
    Ctrl-C."""

    def __init__(self, path: str | os.PathLike, fps: float = 25.0) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise HdmeError(f"{self.path}: videos are written as {', '.join(VIDEO_CODECS)}, not '{suffix}'")
        self.fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[suffix])
        self.fps = fps
        self.tmp = temp_path_beside(self.path)
        self.writer = None
        self.frames = 0

    def write(self, frame_bgr, sigma, name):
        picture = side_by_side(frame_bgr, sigma)
        h, w = picture.shape[:2]
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.tmp), self.fourcc, self.fps, (w, h))
            if not self.writer.isOpened():
                raise HdmeError(f"{self.path}: OpenCV cannot write this video format here")
            self.size = (w, h)
        if (w, h) != self.size:  # an image folder of mixed sizes: keep the first frame's size
            picture = cv2.resize(picture, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(picture)
        self.frames += 1
        return True

    def close(self):
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.frames:
            os.replace(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()


class MapSink(Sink):
    """σ maps as DIR/NAME.png (16-bit, value = 1000·σ) or DIR/NAME.npy (float32 σ px). The folder
    is marked as holding predictions, so that reading its parent again as a folder of frames or
    photos leaves the maps out."""

    def __init__(self, folder: str | os.PathLike, fmt: str = "png") -> None:
        if fmt not in MAP_FORMATS:
            raise HdmeError(f"maps are saved as {' or '.join(MAP_FORMATS)}, not '{fmt}'")
        self.folder = make_prediction_folder(folder)
        self.fmt = fmt

    def write(self, frame_bgr, sigma, name):
        save_sigma_map(self.folder / f"{name}.{self.fmt}", sigma)
        return True
