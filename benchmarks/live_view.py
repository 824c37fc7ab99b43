"""What ``hdme run --serve`` costs the pipeline, and the page's picture for the README.

    python benchmarks/live_view.py fps                  # pipeline FPS with 0, 1 and 3 viewers, one run
    python benchmarks/live_view.py memory --minutes 10  # resident memory while one viewer watches
    python benchmarks/live_view.py screenshot docs/live-view.png

The source is a pan across examples/coffee.jpg at 480×640, held in memory (``fps``: delivered as
fast as the pipeline takes frames, the hardest case for a viewer to slow it down). Viewers are
``curl`` processes reading the MJPEG stream, as a browser on another machine would; the
screenshot is taken by a real headless Chromium.
"""

from __future__ import annotations

import argparse
import io
import resource
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the paced source and the browser driver of the tests

from headless_chromium import HeadlessChromium, find_chromium  # noqa: E402
from runtime_support import PacedSource, served_pipeline  # noqa: E402

from hdme.runtime.backends import create_backend  # noqa: E402
from hdme.runtime.pipeline import parse_size  # noqa: E402


def pan_frames(h: int = 480, w: int = 640, count: int = 24) -> list[np.ndarray]:
    """Crops sliding across examples/coffee.jpg enlarged by a quarter: a slow camera pan."""
    photo = cv2.imread(str(ROOT / "examples" / "coffee.jpg"))
    big = cv2.resize(photo, (w * 5 // 4, h * 5 // 4), interpolation=cv2.INTER_CUBIC)
    steps = np.linspace(0, w // 4, count // 2).astype(int)
    xs = [*steps, *steps[::-1]]  # there and back, so the loop has no jump
    return [np.ascontiguousarray(big[h // 8: h // 8 + h, x: x + w]) for x in xs]


def live_pipeline(model: str | None, source_fps: float | None, serve_fps: float, h: int = 480, w: int = 640,
                  size: tuple[int, int] | None = None):
    return served_pipeline(PacedSource(pan_frames(h, w), fps=source_fps), create_backend(model), serve_fps, size=size)


def start_viewers(url: str, count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(["curl", "-s", "-N", "-o", "/dev/null", url + "stream.mjpg"]) for _ in range(count)]


def stop_viewers(viewers: list[subprocess.Popen]) -> None:
    for viewer in viewers:
        viewer.terminate()
    for viewer in viewers:
        viewer.wait()


def measure_fps(args) -> None:
    order = [n for k in range(args.rounds) for n in ([0, 1, 3] if k % 2 == 0 else [3, 1, 0])]  # ABC CBA: drift cancels
    fps: dict[int, list[float]] = {0: [], 1: [], 3: []}
    cpu_ms: dict[int, list[float]] = {0: [], 1: [], 3: []}  # this process's CPU time (all threads) per pipeline frame
    with live_pipeline(args.model, None, args.serve_fps, size=parse_size(args.size)) as (server, view):
        time.sleep(args.settle)  # warm-up of the engine
        for viewers_wanted in order:
            viewers = start_viewers(server.url, viewers_wanted)
            time.sleep(args.settle)
            frames, encoded, start, cpu = view.latest, view.encoded, time.perf_counter(), process_cpu_s()
            time.sleep(args.seconds)
            elapsed, cpu = time.perf_counter() - start, process_cpu_s() - cpu
            rate, pictures = (view.latest - frames) / elapsed, (view.encoded - encoded) / elapsed
            fps[viewers_wanted].append(rate)
            cpu_ms[viewers_wanted].append(1e3 * cpu / max(view.latest - frames, 1))
            print(f"{viewers_wanted} viewers: {rate:6.2f} FPS pipeline, {pictures:5.2f} pictures/s encoded, "
                  f"{cpu_ms[viewers_wanted][-1]:6.1f} ms CPU a frame", flush=True)
            stop_viewers(viewers)
        engine = view.engine
    base = float(np.mean(fps[0]))
    print(f"\n{engine['name']} {engine['precision']} {engine['model']}, 480x640 frames, model at {args.size or '480x640'}, stream capped at {args.serve_fps:g} FPS, "
          f"{args.rounds} rounds of {args.seconds:g} s per setting")
    print("CPU ratio: the process's CPU time per frame with no viewer over that with viewers, the FPS ratio on a "
          "machine the pipeline keeps busy")
    for n, rates in fps.items():
        cpu_ratio = np.mean(cpu_ms[0]) / np.mean(cpu_ms[n])
        print(f"{n} viewers: mean {np.mean(rates):6.2f} FPS, FPS ratio to 0 viewers {np.mean(rates) / base:.3f}; "
              f"{np.mean(cpu_ms[n]):6.1f} ms CPU a frame, CPU ratio {cpu_ratio:.3f}")


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # the viewers (curl) are other processes
    return usage.ru_utime + usage.ru_stime


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_memory(args) -> None:
    with live_pipeline(args.model, args.source_fps, args.serve_fps) as (server, view):
        viewers = start_viewers(server.url, 1)
        start = time.perf_counter()
        try:
            for minute in range(args.minutes + 1):
                time.sleep(max(0.0, start + 60 * minute - time.perf_counter()))
                print(f"{minute:3d} min: RSS {rss_mib():7.1f} MiB, {view.latest} frames, {view.encoded} pictures, "
                      f"{view.viewers} viewer(s)", flush=True)
        finally:
            stop_viewers(viewers)


def take_screenshot(args) -> None:
    executable = find_chromium()
    if executable is None:
        sys.exit("no Chromium installed (Debian: apt-get install chromium)")
    with live_pipeline(args.model, 10.0, 10.0, h=240, w=320) as (server, view):
        while view.latest < 3:
            time.sleep(0.1)
        for x, y in ((250, 60), (60, 200)):  # the cup's rim and the table in front
            urllib.request.urlopen(urllib.request.Request(f"{server.url}api/points?x={x}&y={y}", method="POST")).read()
        time.sleep(args.history)
        with HeadlessChromium(executable, width=760, height=620) as browser:
            browser.open(server.url)
            browser.wait_for("document.getElementById('stream').naturalWidth > 0 && document.getElementById('pointlist').textContent")
            time.sleep(1.5)
            png = browser.screenshot()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(io.BytesIO(png)).convert("RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT)  # a small file for the README
    picture = rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    picture.save(args.out, optimize=True)
    print(f"{args.out}: {picture.width}x{picture.height}, {args.out.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model for the pipeline (default: the shipped hdme-edge)")
    parser.add_argument("--serve-fps", type=float, default=10.0, help="the stream's picture-rate cap (hdme run's default)")
    commands = parser.add_subparsers(dest="command", required=True)
    fps = commands.add_parser("fps", help="pipeline FPS with 0, 1 and 3 viewers in one run")
    fps.add_argument("--seconds", type=float, default=15.0, help="measured seconds per setting")
    fps.add_argument("--settle", type=float, default=2.0, help="seconds after the viewers connect before measuring")
    fps.add_argument("--rounds", type=int, default=2, help="rounds over the settings (alternating order)")
    fps.add_argument("--size", default=None, help="run the model at HxW, as hdme run --size (a faster pipeline, "
                     "so the viewers' share of the machine weighs more)")
    memory = commands.add_parser("memory", help="resident memory each minute while one viewer watches")
    memory.add_argument("--minutes", type=int, default=10)
    memory.add_argument("--source-fps", type=float, default=15.0, help="the camera's frame rate")
    shot = commands.add_parser("screenshot", help="a PNG of the page in headless Chromium")
    shot.add_argument("out", type=Path)
    shot.add_argument("--history", type=float, default=6.0, help="seconds of σ history at the points before the shot")
    args = parser.parse_args()
    {"fps": measure_fps, "memory": measure_memory, "screenshot": take_screenshot}[args.command](args)


if __name__ == "__main__":
    main()
