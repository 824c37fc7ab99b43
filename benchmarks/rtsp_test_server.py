"""A real RTSP server on 127.0.0.1 for soak tests: GStreamer's RTSP server streams H.264 of a
generated video whose frames carry their own number and creation time as a barcode.

Run it with a Python that has GStreamer's introspection bindings (Debian: python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp, gstreamer1.0-plugins-ugly for x264):

    /usr/bin/python3 benchmarks/rtsp_test_server.py --port 8554   # rtsp://127.0.0.1:8554/hdme

The server itself needs no numpy (the system Python often has none); ``read_stamp`` is for
the reading side and imports numpy when called. Frame numbers follow the wall clock from
``--epoch``, so a restarted server goes on numbering where the outage ends.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time

WIDTH, HEIGHT, FPS = 320, 240, 15
BLOCK = 16  # px per bit: whole H.264 macroblocks survive compression black or white
BITS = 64  # 24 bits of frame number, 40 bits of creation time in ms
PER_ROW = 16
PATH = "/hdme"
REQUIREMENTS = "python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp and gstreamer1.0-plugins-ugly (x264)"
_PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
          "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')")


def server_python() -> str | None:
    """A Python interpreter that can run this server (this one or the system's), or None."""
    for candidate in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", _PROBE], capture_output=True, timeout=60)
            if probe.returncode == 0:
                return candidate
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """This server in a child process (``python``: from ``server_python()``), for tests and soaks."""

    def __init__(self, python: str, port: int, epoch: float, log: str | None = None, fps: int = FPS) -> None:
        self.url = f"rtsp://127.0.0.1:{port}{PATH}"
        command = [python, os.path.abspath(__file__), "--port", str(port), "--epoch", repr(epoch), "--fps", str(fps)]
        self.proc = subprocess.Popen(command + (["--log", log] if log else []), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()  # "ready …" once it listens, or its error
        if not line.startswith("ready"):
            self.proc.kill()
            raise RuntimeError(f"the RTSP test server did not start: {line.strip() or self.proc.wait()}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as when a camera loses power."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def stamp_bits(number: int, ms: int) -> list[int]:
    value = ((number & 0xFFFFFF) << 40) | (ms & 0xFFFFFFFFFF)
    return [(value >> (BITS - 1 - i)) & 1 for i in range(BITS)]


def read_stamp(frame_bgr) -> tuple[int, float]:
    """(frame number, creation time in s since the epoch) from a frame of this server, as
    decoded by any client (the barcode occupies the frame's top-left 256×64 px)."""
    import numpy as np

    grey = np.asarray(frame_bgr, dtype=np.float32).mean(axis=2)
    value = 0
    for i in range(BITS):
        y, x = (i // PER_ROW) * BLOCK + BLOCK // 2, (i % PER_ROW) * BLOCK + BLOCK // 2
        value = (value << 1) | int(grey[y - 3:y + 4, x - 3:x + 4].mean() > 128)
    number, ms = value >> 40, value & 0xFFFFFFFFFF
    now_ms = int(time.time() * 1000)
    ms += (now_ms - ms) // (1 << 40) * (1 << 40)  # the stamp keeps the clock's low 40 bits
    return number, ms / 1000.0


def texture(width: int, height: int) -> bytearray:
    """A smooth BGR pattern with detail at several scales, twice the frame width, to scroll."""
    rows = []
    for y in range(height):
        row = bytearray(3 * width)
        for x in range(width):
            a = math.sin(x * 2 * math.pi / width * 3) * math.cos(y / 17.0)
            b = math.sin((x + 2 * y) / 6.0) * 0.5 + math.sin(x / 2.3) * math.sin(y / 3.1) * 0.3
            v = int(127 + 60 * a + 60 * b)
            row[3 * x:3 * x + 3] = bytes((max(0, min(255, v)), max(0, min(255, 255 - v)), max(0, min(255, (v * 3) % 256))))
        rows.append(row)
    return bytearray().join(rows)


class StampedVideo:
    def __init__(self, epoch: float, fps: int, log) -> None:
        self.epoch, self.fps, self.log = epoch, fps, log
        self.background = texture(2 * WIDTH, HEIGHT)
        self.last = -1

    def frame(self) -> tuple[int, bytes] | None:
        now = time.time()
        number = int((now - self.epoch) * self.fps + 0.5)
        if number == self.last:
            return None
        self.last = number
        shift = 3 * (number * 4 % WIDTH)
        stride = 3 * 2 * WIDTH
        data = bytearray().join(self.background[y * stride + shift:y * stride + shift + 3 * WIDTH] for y in range(HEIGHT))
        white, black = b"\xff" * (3 * BLOCK), b"\x00" * (3 * BLOCK)
        for i, bit in enumerate(stamp_bits(number, int(now * 1000))):
            top, left = (i // PER_ROW) * BLOCK, (i % PER_ROW) * BLOCK
            for y in range(top, top + BLOCK):
                start = 3 * (y * WIDTH + left)
                data[start:start + 3 * BLOCK] = white if bit else black
        if self.log is not None:
            self.log.write(f"{number} {now:.4f}\n")
            self.log.flush()
        return number, bytes(data)


def serve(port: int, fps: int, epoch: float, log_path: str | None) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    log = open(log_path, "a") if log_path else None
    video = StampedVideo(epoch, fps, log)
    sources = []
    # A starved encoder drops the oldest frames instead of queueing them: lag built up here would
    # be charged to the client.
    launch = (f"( appsrc name=src is-live=true format=time do-timestamp=true max-buffers=2 leaky-type=downstream "
              f"caps=video/x-raw,format=BGR,width={WIDTH},height={HEIGHT},framerate={fps}/1 "
              f"! videoconvert ! video/x-raw,format=I420 "
              f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2000 "
              f"! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)

    def configure(_factory, media) -> None:
        src = media.get_element().get_child_by_name("src")
        sources.append(src)
        media.connect("unprepared", lambda *_: sources.remove(src) if src in sources else None)

    factory.connect("media-configure", configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(PATH, factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")

    def tick() -> bool:
        made = video.frame() if sources else None
        if made is not None:
            for src in list(sources):
                src.emit("push-buffer", Gst.Buffer.new_wrapped(made[1]))
        return True

    GLib.timeout_add(max(1, 1000 // (4 * fps)), tick)  # polled faster than the frame rate; numbers follow the clock
    print(f"ready rtsp://127.0.0.1:{port}{PATH}", flush=True)
    GLib.MainLoop().run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=int, default=FPS)
    parser.add_argument("--epoch", type=float, default=None, help="Time frame 0 was due (s since the Unix epoch).")
    parser.add_argument("--log", default=None, help="Append 'NUMBER TIME' for every frame sent.")
    args = parser.parse_args()
    serve(args.port, args.fps, args.epoch if args.epoch is not None else time.time(), args.log)


if __name__ == "__main__":
    main()
