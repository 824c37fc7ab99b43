"""Stress figure for ``hdme predict``: a folder of mixed images, some corrupt, some huge.

    python benchmarks/predict_stress.py --count 1000 --corrupt 80 --huge 10 --json stress.json --plot stress.png

Writes the images (seeded), runs ``hdme predict FOLDER --out OUT`` as a user would and checks
that exactly the good images got their maps, that every bad one got one line on stderr and
no output, and samples the process's resident memory as it goes (it should stay flat: nothing
may accumulate per image).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

GOOD_FORMATS = (".png", ".jpg", ".tiff", ".webp", ".bmp")


def write_inputs(folder: Path, count: int, corrupt: int, huge: int, seed: int) -> tuple[set[str], set[str]]:
    """``count`` files: ``corrupt`` broken ones, ``huge`` photos of 2600×3400 px, the rest
    ordinary images of 48–480 px in several formats, bit depths and channel counts.
    Returns the stems of the good and of the bad files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    base = cv2.GaussianBlur(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8), (0, 0), 2.0)
    good, bad = set(), set()
    kinds = ["corrupt"] * corrupt + ["huge"] * huge + ["good"] * (count - corrupt - huge)
    for i, kind in enumerate(rng.permutation(kinds)):
        stem = f"{i:04d}"
        if kind == "huge":
            img = cv2.resize(base, (3400, 2600), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(folder / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 85])
            good.add(stem)
            continue
        h, w = (int(v) for v in rng.integers(48, 481, 2))
        y, x = int(rng.integers(0, 600 - min(h, 600) + 1)), int(rng.integers(0, 800 - min(w, 800) + 1))
        img = cv2.resize(base[y:y + h, x:x + w], (w, h))
        variant = int(rng.integers(0, 4))
        if variant == 1:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif variant == 2:
            img = np.dstack([img, rng.integers(128, 256, (h, w), dtype=np.uint8)])
        elif variant == 3:
            img = img.astype(np.uint16) * 257
        ext = GOOD_FORMATS[int(rng.integers(0, len(GOOD_FORMATS)))]
        if ext in (".jpg", ".bmp", ".webp") and variant == 3:
            ext = ".png"  # 16-bit needs PNG or TIFF
        data = cv2.imencode(ext, img)[1].tobytes()
        if kind == "corrupt":
            damage = int(rng.integers(0, 4))
            if damage == 0:
                data = data[: int(rng.integers(0, len(data) // 2))]  # truncated
            elif damage == 1:
                data = data[:8] + rng.integers(0, 256, len(data) - 8, dtype=np.uint8).tobytes()  # garbage after the header
            elif damage == 2:
                data = b""
            else:
                img = img[:5, :5]  # too small for the network
                data = cv2.imencode(ext, img)[1].tobytes()
            bad.add(stem)
        else:
            good.add(stem)
        (folder / f"{stem}{ext}").write_bytes(data)
    return good, bad


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run(folder: Path, out: Path, options: list[str]) -> dict:
    command = [sys.executable, "-m", "hdme.cli", "predict", str(folder), "--out", str(out), *options]
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
    drains = [threading.Thread(target=lambda name=name: lines[name].extend(getattr(proc, name)), daemon=True)
              for name in lines]
    for drain in drains:
        drain.start()
    samples = []
    while proc.poll() is None:
        rss = rss_mb(proc.pid)
        done = sum(1 for line in list(lines["stdout"]) if " ms" in line and ": " in line)
        if rss is not None:
            samples.append((time.time() - start, rss, done))
        time.sleep(0.5)
    for drain in drains:
        drain.join(10)
    return {"returncode": proc.returncode, "seconds": time.time() - start, "samples": samples,
            "stdout": "".join(lines["stdout"]), "stderr": "".join(lines["stderr"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--corrupt", type=int, default=80)
    parser.add_argument("--huge", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--options", default="", help='More options for hdme predict, e.g. "--tta none".')
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hdme-stress-") as tmp:
        folder, out = Path(tmp) / "in", Path(tmp) / "out"
        good, bad = write_inputs(folder, args.count, args.corrupt, args.huge, args.seed)
        result = run(folder, out, args.options.split())
        written = {p.stem for p in out.glob("*.npy")}
        pictures = {p.stem for p in out.glob("*.png")}
        leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    failed_lines = [line for line in result["stderr"].splitlines() if line.startswith("failed ")]
    other_lines = [line for line in result["stderr"].splitlines() if line.strip() and not line.startswith("failed ")]
    failed_stems = {Path(line.split(": ")[0].removeprefix("failed ")).stem for line in failed_lines}
    samples = np.array(result["samples"])
    progress = samples[:, 2] / max(1, len(good)) if samples.size else np.array([])

    def rss_at(fraction: float) -> float | None:
        reached = np.flatnonzero(progress >= fraction)
        return float(samples[reached[0], 1]) if reached.size else None

    summary = {
        "inputs": args.count, "good": len(good), "bad": len(bad), "huge": args.huge, "options": args.options,
        "exit_status": result["returncode"], "seconds": round(result["seconds"], 1),
        "maps_written_exactly_the_good_ones": written == good and pictures == good,
        "maps_written": len(written), "one_failed_line_per_bad_file": failed_stems == bad and len(failed_lines) == len(bad),
        "failed_lines": len(failed_lines), "other_stderr_lines": other_lines[:5], "temp_files_left": leftovers,
        "rss_mb": {"at_10%": rss_at(0.1), "at_50%": rss_at(0.5), "at_90%": rss_at(0.9),
                   "peak": float(samples[:, 1].max()) if samples.size else None},
        "last_line": result["stdout"].strip().splitlines()[-1] if result["stdout"].strip() else "",
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary | {"samples": result["samples"]}, indent=1) + "\n")
    if args.plot and samples.size:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot(samples[:, 2], samples[:, 1])
        ax.set_xlabel("images done")
        ax.set_ylabel("resident memory, MB")
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
