"""How steady ``hdme run``'s σ maps are on video, with and without ``--temporal-filter``.

    python benchmarks/temporal_stability.py [--model hdme-edge] [--frames 40]

Four 640×480 MJPEG clips made from examples/coffee.jpg with shot noise (1000 photons at white) and
Gaussian read noise (0.5 % of full scale), a fresh draw each frame:
- static: the same scene throughout — temporal std of σ per pixel and frame-to-frame jumps;
- cut: the scene turned upside down halfway — frames until the map settles on the new scene;
- focus: the scene blurred (Gaussian, 2 px) halfway, as when a lens refocuses — the same;
- pan: the camera moving 4 px a frame — how far the filtered map strays from the unfiltered one
  (smearing).
"Settled" means: 90 % of pixels within ``--tolerance`` px of the new scene's map (the per-pixel
median of the unfiltered maps over the clip's last quarter). Each clip runs once through the
streaming pipeline; the filter is applied to the recorded frames and maps in order, exactly as
``hdme run --temporal-filter`` applies it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from hdme.runtime.backends import create_backend
from hdme.runtime.pipeline import StreamPipeline
from hdme.runtime.sinks import Sink
from hdme.runtime.sources import VideoFileSource
from hdme.runtime.temporal import TemporalFilter

ROOT = Path(__file__).resolve().parents[1]
PHOTONS, READ_NOISE = 1000.0, 0.005
H, W = 480, 640


class Recorder(Sink):
    def __init__(self) -> None:
        self.frames, self.maps = [], []

    def write(self, frame_bgr, sigma, name):
        self.frames.append(frame_bgr)
        self.maps.append(sigma)
        return True


def noisy(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = scene.astype(np.float32) / 255.0
    x = rng.poisson(x * PHOTONS) / PHOTONS + rng.normal(0.0, READ_NOISE, x.shape)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def clips(frames: int) -> dict[str, list[np.ndarray]]:
    """Noise-free scenes per frame for each clip."""
    photo = cv2.imread(str(ROOT / "examples" / "coffee.jpg"))
    scene = cv2.resize(photo, (W, H), interpolation=cv2.INTER_AREA)
    half = frames // 2
    wide = cv2.resize(photo, (W + 4 * frames, (W + 4 * frames) * H // W), interpolation=cv2.INTER_CUBIC)[:H]
    return {
        "static": [scene] * frames,
        "cut": [scene] * half + [cv2.rotate(scene, cv2.ROTATE_180)] * (frames - half),
        "focus": [scene] * half + [cv2.GaussianBlur(scene, (0, 0), 2.0)] * (frames - half),
        "pan": [np.ascontiguousarray(wide[:, 4 * k: 4 * k + W]) for k in range(frames)],
    }


def run_clip(backend, scenes: list[np.ndarray], path: Path, rng: np.random.Generator) -> Recorder:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    for scene in scenes:
        writer.write(noisy(scene, rng))
    writer.release()
    recorder = Recorder()
    StreamPipeline(VideoFileSource(path), backend, [recorder]).run()
    return recorder


def filtered(recorder: Recorder) -> np.ndarray:
    steady = TemporalFilter()
    return np.stack([steady(frame, sigma) for frame, sigma in zip(recorder.frames, recorder.maps)])


def settle_frames(maps: np.ndarray, reference: np.ndarray, change: int, tolerance: float) -> tuple[int | None, list[float]]:
    """Frames after ``change`` until 90 % of pixels lie within ``tolerance`` of ``reference``."""
    p90 = [float(np.percentile(np.abs(m - reference), 90)) for m in maps[change:]]
    return next((k for k, e in enumerate(p90) if e <= tolerance), None), p90


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the shipped hdme-edge")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--skip", type=int, default=8, help="static clip: frames left out while the filter fills")
    parser.add_argument("--tolerance", type=float, default=0.5, help="px: a map has settled when 90 %% of it is this close")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    backend = create_backend(args.model)
    print(f"{backend.describe()}, {W}x{H}, {args.frames} frames per clip, MJPEG")
    half = args.frames // 2
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: run_clip(backend, scenes, Path(tmp) / f"{name}.avi", rng) for name, scenes in clips(args.frames).items()}
    results = {name: {"off": np.stack(r.maps), "on": filtered(r)} for name, r in runs.items()}

    print("\nstatic clip (frames {}–{}): temporal std of σ per pixel, frame-to-frame jump".format(args.skip, args.frames - 1))
    for mode, maps in results["static"].items():
        maps = maps[args.skip:]
        std, mean = maps.std(axis=0), maps.mean(axis=0)
        jumps = np.abs(np.diff(maps, axis=0))
        print(f"  filter {mode:3s}: std median {np.median(std):.3f} px, p90 {np.percentile(std, 90):.3f} px "
              f"(median of std/σ {np.median(std / np.maximum(mean, 1e-3)):.1%}); jump p99 {np.percentile(jumps, 99):.3f} px, "
              f"mean σ {mean.mean():.2f} px")

    for clip in ("cut", "focus"):
        off, on = results[clip]["off"], results[clip]["on"]
        reference = np.median(off[-max(2, args.frames // 4):], axis=0)
        print(f"\n{clip} at frame {half}: p90 |σ − settled map| px for frames {half}, {half + 1}, …; mean σ before → after "
              f"{off[half - 5:half].mean():.2f} → {reference.mean():.2f} px")
        before, after = off[half - 5:half].mean(), reference.mean()
        for mode, maps in (("off", off), ("on", on)):
            lags = [settle_frames(maps, reference, half, tolerance)[0] for tolerance in (args.tolerance, args.tolerance / 2)]
            shown = ", ".join(f"{e:.2f}" for e in settle_frames(maps, reference, half, args.tolerance)[1][:6])
            line = f"  filter {mode:3s}: settled within {args.tolerance:g} px after {lags[0]} frame(s), within " \
                   f"{args.tolerance / 2:g} px after {lags[1]}; p90 {shown}"
            if abs(after - before) >= 0.5:  # a clear step in mean σ: how much of it each frame shows
                line += "; mean-σ step shown " + ", ".join(f"{(m.mean() - before) / (after - before):.0%}" for m in maps[half:half + 3])
            print(line)

    off, on = results["pan"]["off"][args.skip:], results["pan"]["on"][args.skip:]
    gap = np.abs(on - off)
    print(f"\npan (4 px a frame): |filtered − unfiltered| median {np.median(gap):.3f} px, p90 {np.percentile(gap, 90):.3f} px, "
          f"p99 {np.percentile(gap, 99):.3f} px; unfiltered jump p90 {np.percentile(np.abs(np.diff(off, axis=0)), 90):.3f} px")


if __name__ == "__main__":
    main()
