"""``hdme run --serve``: the stream's latest frame and σ map, with live figures, in a browser.

A small HTTP server (standard library only) inside the runtime process. The pipeline hands each
frame to ``LiveView`` — a sink that only keeps a reference to the latest frame — and never waits
for a viewer: pictures are drawn and JPEG-encoded on the viewers' own threads, only while someone
watches, at most ``max_fps`` times a second, once per frame however many viewers there are. A
slow viewer gets the latest picture when it is ready for one; a stalled one blocks only its own
connection thread, which gives up after ``SEND_TIMEOUT_S``.

Endpoints: ``/`` the page, ``/stream.mjpg`` (multipart MJPEG; each part's ``X-Frame`` header is
the frame's number in the run), ``/frame.jpg`` (one picture),
``/api/stats`` (the figures as JSON), ``/api/points`` (POST ?x=&y= to watch σ at a frame pixel,
DELETE to clear).
"""

from __future__ import annotations

import collections
import importlib.resources
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from hdme.conventions import SIGMA_MAX, side_by_side
from hdme.errors import HdmeError
from hdme.runtime.backends import Backend
from hdme.runtime.focus import Target, sample_sigma
from hdme.runtime.sinks import Sink

DEFAULT_HOST = "127.0.0.1"
PANEL_MAX_WIDTH = 640  # px of each streamed panel; wider frames are shrunk for the viewers
JPEG_QUALITY = 80
FPS_WINDOW_S = 2.0  # the live FPS counts the frames of the last seconds
LATENCY_WINDOW = 300  # frames behind the live p50/p99
HISTORY_S = 10.0  # σ history kept per watched point
MAX_POINTS = 4
STALL_S = 2.0  # no frame for this long: the source is waiting or reconnecting
SEND_TIMEOUT_S = 20.0  # a viewer that takes no data for this long is disconnected
BOUNDARY = "hdmeframe"


def parse_address(text: str) -> tuple[str, int]:
    """'[HOST:]PORT' → (host, port); the host defaults to the loopback interface."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host.strip("[]") if sep else DEFAULT_HOST
    if not port.isdigit() or int(port) > 65535 or not host:
        raise HdmeError(f"'{text}' is not [HOST:]PORT (e.g. 8080 or 0.0.0.0:8080)")
    return host, int(port)


class LiveView(Sink):
    """The shared state between the pipeline and the viewers: the latest frame and σ map, frame
    times, watched points with their σ history, and where to read the run's figures."""

    def __init__(self, backend: Backend, max_fps: float = 10.0) -> None:
        if max_fps <= 0:
            raise HdmeError(f"the live view's frame rate must be positive, got {max_fps}")
        self.engine = {"name": backend.name, "precision": backend.precision, "device": backend.device,
                       "model": backend.model_path.name}
        self.min_interval = 1.0 / max_fps
        self.pipeline = None
        self.viewers = 0
        self.encoded = 0  # pictures encoded so far, for all viewers together
        self._cond = threading.Condition()
        self._seq = 0
        self._frame = self._sigma = None
        self._times: collections.deque[float] = collections.deque()
        self._points: list[dict] = []
        self._message: tuple[float, str] | None = None  # the source's last word, and when
        self._started = time.perf_counter()
        self._ended = False
        self._closed = False
        self._encode_lock = threading.Lock()
        self._jpeg_seq, self._jpeg, self._jpeg_time, self._panel = 0, b"", 0.0, (0, 0)

    # -- the pipeline's side: cheap, never waits on a viewer ------------------------------------
    def attach(self, pipeline) -> None:
        """Read stage latencies and dropped frames from this running ``StreamPipeline``."""
        self.pipeline = pipeline

    def note_source_message(self, message: str) -> None:
        self._message = (time.perf_counter(), message)

    def write(self, frame_bgr, sigma, name):
        now = time.perf_counter()
        with self._cond:
            self._frame, self._sigma = frame_bgr, sigma
            self._seq += 1
            self._times.append(now)
            while self._times[0] < now - FPS_WINDOW_S:
                self._times.popleft()
            for point in self._points:
                try:
                    value = float(sample_sigma(sigma, [point["target"]])[0])
                except HdmeError:  # the frame size changed under the point
                    continue
                history = point["history"]
                history.append((now, value))
                while history[0][0] < now - HISTORY_S:
                    history.popleft()
            self._cond.notify_all()
        return True

    def close(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    # -- the viewers' side ----------------------------------------------------------------------
    @property
    def latest(self) -> int:
        """Number of the latest frame (0: none yet)."""
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def viewer_joined(self) -> None:
        with self._cond:
            self.viewers += 1

    def viewer_left(self) -> None:
        with self._cond:
            self.viewers -= 1

    def shut(self) -> None:
        """Release every viewer waiting for a picture (the server is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next_jpeg(self, after: int, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """The picture of a frame newer than ``after`` as JPEG, with its frame number; None when
        no newer frame came within ``timeout`` s or the view is shut."""
        after = max(after, 0)  # frame 0 is "none yet"
        # Wait for a newer frame before taking the encode lock: a viewer waiting on a stalled or
        # ended source must not keep the others, or /frame.jpg, from the picture already encoded.
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > after or self._closed, timeout) or self._closed:
                return None
        with self._encode_lock:
            fresh = self._jpeg_seq == self._seq or time.perf_counter() - self._jpeg_time < self.min_interval
            if self._jpeg_seq > after and fresh:  # another viewer encoded it already
                return self._jpeg_seq, self._jpeg
            wait = self._jpeg_time + self.min_interval - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            with self._cond:
                newer = self._cond.wait_for(lambda: self._seq > max(after, self._jpeg_seq) or self._closed, timeout)
                if not newer or self._closed:
                    return None
                seq, frame, sigma = self._seq, self._frame, self._sigma
            self._jpeg = self._encode(frame, sigma)
            self.encoded += 1
            self._jpeg_seq, self._jpeg_time = seq, time.perf_counter()
            return seq, self._jpeg

    def _encode(self, frame: np.ndarray, sigma: np.ndarray) -> bytes:
        h, w = frame.shape[:2]
        if w > PANEL_MAX_WIDTH:  # σ keeps its values: only the picture shrinks
            size = (PANEL_MAX_WIDTH, max(1, round(h * PANEL_MAX_WIDTH / w)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            sigma = cv2.resize(sigma, size, interpolation=cv2.INTER_AREA)
        self._panel = (frame.shape[1], frame.shape[0])
        ok, data = cv2.imencode(".jpg", side_by_side(frame, sigma), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not encode the live picture")
        return data.tobytes()

    def watch(self, x: float, y: float) -> dict:
        """Follow σ (median of 5×5 px) at frame pixel (x, y); the oldest point makes room."""
        with self._cond:
            if self._sigma is None:
                raise HdmeError("no frame has arrived yet")
            h, w = self._sigma.shape
            if not (0 <= x < w and 0 <= y < h):
                raise HdmeError(f"({x:g}, {y:g}) lies outside the {w}x{h} frame")
            target = Target(int(x), int(y))
            now = time.perf_counter()
            point = {"target": target, "history": collections.deque([(now, float(sample_sigma(self._sigma, [target])[0]))])}
            self._points = [*self._points[-(MAX_POINTS - 1):], point]
            return self._point_figures(point, now)

    def clear_points(self) -> None:
        with self._cond:
            self._points = []

    @staticmethod
    def _point_figures(point: dict, now: float) -> dict:
        history = list(point["history"])
        return {"x": point["target"].x, "y": point["target"].y, "sigma": history[-1][1],
                "history": [[round(t - now, 3), round(s, 4)] for t, s in history]}

    def figures(self) -> dict:
        """Everything the page shows, as plain JSON-able values."""
        now = time.perf_counter()
        with self._cond:
            times = list(self._times)
            frames = self._seq
            size = None if self._sigma is None else [self._sigma.shape[1], self._sigma.shape[0]]
            points = [self._point_figures(p, now) for p in self._points]
        recent = [t for t in times if t >= now - FPS_WINDOW_S]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else 0.0
        latency, dropped, corrupt, source = {}, 0, 0, None
        if self.pipeline is not None:
            for stage, samples in self.pipeline.stats.stage_ms.items():
                # copied in one C call, so the pipeline's appends cannot interleave with it
                tail = list(samples)[-LATENCY_WINDOW:]
                if tail:
                    p50, p99 = np.percentile(tail, [50, 99])
                    latency[stage] = {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}
            src = self.pipeline.source
            dropped, corrupt, source = src.dropped, src.corrupt, src.description
        return {
            "frames": frames, "fps": round(fps, 2), "dropped": dropped, "corrupt": corrupt,
            "latency_ms": latency, "engine": self.engine, "source": source,
            "source_state": self._source_state(now, times[-1] if times else None),
            "source_message": None if self._message is None else self._message[1],
            "frame_size": size, "panel_size": list(self._panel),
            "sigma_max": SIGMA_MAX, "viewers": self.viewers, "stream_fps_cap": round(1.0 / self.min_interval, 2),
            "points": points, "history_s": HISTORY_S, "uptime_s": round(now - self._started, 1),
        }

    def _source_state(self, now: float, last_frame: float | None) -> str:
        if self._ended:
            return "ended"
        said, message = self._message or (0.0, "")
        if "reconnecting" in message and (last_frame is None or said > last_frame):
            return "reconnecting"
        if last_frame is not None and now - last_frame < STALL_S:
            return "streaming"
        return "waiting for frames"


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    timeout = SEND_TIMEOUT_S  # socket timeout: a stalled viewer's thread ends instead of waiting forever

    def log_message(self, fmt, *args):  # the run's own output stays readable
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self):
        view, path = self.server.view, urlsplit(self.path).path
        if path == "/":
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/stats":
            self._json(view.figures())
        elif path == "/frame.jpg":
            picture = view.next_jpeg(view.latest - 1, timeout=2.0)
            if picture is None:
                self._json({"error": "no frame yet"}, HTTPStatus.SERVICE_UNAVAILABLE)
            else:
                self._send(HTTPStatus.OK, picture[1], "image/jpeg")
        elif path == "/stream.mjpg":
            self._stream(view)
        else:
            self._json({"error": f"no such page: {path}"}, HTTPStatus.NOT_FOUND)

    def _stream(self, view: LiveView) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        view.viewer_joined()
        try:
            seq = 0
            while not view.closed:
                picture = view.next_jpeg(seq)
                if picture is None:
                    continue
                seq, jpeg = picture
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\nX-Frame: {seq}\r\n\r\n".encode()
                                 + jpeg + b"\r\n")
                self.wfile.flush()
        except OSError:  # the viewer left or stalled past the timeout
            pass
        finally:
            view.viewer_left()

    def do_POST(self):
        if urlsplit(self.path).path != "/api/points":
            return self._json({"error": "no such endpoint"}, HTTPStatus.NOT_FOUND)
        query = parse_qs(urlsplit(self.path).query)
        try:
            x, y = float(query["x"][0]), float(query["y"][0])
        except (KeyError, ValueError):
            return self._json({"error": "give the point as ?x=…&y=… (frame pixels)"}, HTTPStatus.BAD_REQUEST)
        try:
            self._json(self.server.view.watch(x, y))
        except HdmeError as exc:
            self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)

    def do_DELETE(self):
        if urlsplit(self.path).path != "/api/points":
            return self._json({"error": "no such endpoint"}, HTTPStatus.NOT_FOUND)
        self.server.view.clear_points()
        self._json({"points": []})


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a viewer still connected never keeps the process alive

    def __init__(self, address, view: LiveView) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.view = view
        self.page = importlib.resources.files("hdme.runtime").joinpath("live_view.html").read_bytes()


    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], OSError):  # a viewer that went away is no error
            super().handle_error(request, client_address)


class LiveServer:
    """Serve ``view`` on ``host:port`` (port 0: any free port) from a background thread."""

    def __init__(self, view: LiveView, host: str = DEFAULT_HOST, port: int = 8080) -> None:
        try:
            self._server = _Server((host, port), view)
        except OSError as exc:
            raise HdmeError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
        self.view = view
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hdme-serve", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def wait_for_interrupt(self) -> None:
        """Keep serving until Ctrl-C."""
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass

    def close(self) -> None:
        self.view.shut()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "LiveServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
