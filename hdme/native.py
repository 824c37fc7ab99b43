"""Native libraries (OpenCV, FFmpeg, libpng) write their own warnings to stderr; hdme says what
went wrong in one line instead, so their noise is turned off or captured."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Iterator

_capture_lock = threading.Lock()


def silence_native_logs() -> None:
    """Turn off OpenCV's log and, through OpenCV, FFmpeg's. FFmpeg reads its level when OpenCV
    first opens a stream, so this runs before any capture is opened; a user's own setting
    (OPENCV_LOG_LEVEL, OPENCV_FFMPEG_LOGLEVEL) wins."""
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class CapturedStderr:
    text: str = ""

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")


@contextlib.contextmanager
def captured_native_stderr() -> Iterator[CapturedStderr]:
    """What native code writes to file descriptor 2 inside the block (libpng prints its errors
    there, not through OpenCV's log), kept instead of shown. Python's own stderr is flushed first;
    blocks in different threads take turns, since the descriptor is shared by the whole process."""
    captured = CapturedStderr()
    with _capture_lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")
