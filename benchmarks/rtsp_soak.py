"""Soak test of ``hdme run`` against a real RTSP server on 127.0.0.1.

    python benchmarks/rtsp_soak.py --seconds 150 --json soak.json --plot soak.png

Timeline: ``hdme run rtsp://127.0.0.1:PORT/hdme --save-maps DIR --save-video V.avi`` starts
first; the server (benchmarks/rtsp_test_server.py) comes up ``--lead`` s later; half-way through
it is killed with SIGKILL and restarted ``--outage`` s later; at the end hdme gets Ctrl-C.

Every frame carries its number and creation time (a barcode). The saved video holds the
frames in output order and the saved maps' modification times say when each was output,
so per output: capture-to-output latency (creation on the server → σ map on disk, through
H.264, RTSP, decoding and the model) and which frames are missing. Reported: latency
p50/p99 per ``--window`` s (flat means no build-up), when hdme first connected, the output
gap around the outage, and how many frames the server sent that were not output, inside and
outside the outage.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtsp_test_server import FPS, REQUIREMENTS, ServerProcess, free_port, read_stamp, server_python  # noqa: E402


def run_soak(seconds: float, lead: float, outage: float, fps: int, hdme_options: list[str], work: Path) -> dict:
    python = server_python()
    if python is None:
        raise SystemExit(f"no RTSP server can run here: install {REQUIREMENTS}")
    port, epoch = free_port(), time.time()
    url = f"rtsp://127.0.0.1:{port}/hdme"
    maps, video, sent = work / "maps", work / "out.avi", work / "sent.log"
    command = [sys.executable, "-m", "hdme.cli", "run", url, "--save-maps", str(maps), "--save-video", str(video),
               *hdme_options]
    events: dict[str, float] = {}
    hdme_log = open(work / "hdme.log", "w")
    # Ctrl-C must reach hdme even where this script runs with SIGINT ignored (a background job).
    hdme = subprocess.Popen(command, stdout=hdme_log, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    events["hdme_started"] = time.time()
    servers = []
    try:
        time.sleep(lead)
        servers.append(ServerProcess(python, port, epoch, log=str(sent), fps=fps))
        events["server_up"] = time.time()
        time.sleep(max(0.0, events["hdme_started"] + seconds / 2 - time.time()))
        servers[-1].kill()
        events["server_killed"] = time.time()
        time.sleep(outage)
        servers.append(ServerProcess(python, port, epoch, log=str(sent), fps=fps))
        events["server_restarted"] = time.time()
        time.sleep(max(0.0, events["hdme_started"] + seconds - time.time()))
        hdme.send_signal(signal.SIGINT)
        hdme.wait(timeout=60)
        events["hdme_stopped"] = time.time()
    finally:
        for server in servers:
            server.kill()
        if hdme.poll() is None:
            hdme.kill()
        hdme_log.close()
    return analyse(maps, video, sent, events, (work / "hdme.log").read_text())


def analyse(maps: Path, video: Path, sent: Path, events: dict[str, float], log: str) -> dict:
    outputs = sorted(maps.glob("*.png"))  # named by capture index: output order
    output_times = np.array([p.stat().st_mtime_ns / 1e9 for p in outputs])
    cap = cv2.VideoCapture(str(video))
    stamps = []
    while True:
        ok, picture = cap.read()
        if not ok:
            break
        stamps.append(read_stamp(picture))
    cap.release()
    n = min(len(stamps), len(outputs))
    numbers = np.array([s[0] for s in stamps[:n]])
    latency_ms = (output_times[:n] - np.array([s[1] for s in stamps[:n]])) * 1e3
    output_times = output_times[:n]

    t0 = events["hdme_started"]
    windows = []
    for start in np.arange(0.0, events["hdme_stopped"] - t0, WINDOW):
        inside = (output_times - t0 >= start) & (output_times - t0 < start + WINDOW)
        if inside.sum() >= 5:
            w = latency_ms[inside]
            windows.append({"from_s": float(start), "frames": int(inside.sum()),
                            "p50_ms": float(np.percentile(w, 50)), "p99_ms": float(np.percentile(w, 99))})

    created = np.array([s[1] for s in stamps[:n]])
    before = np.flatnonzero(created < events["server_killed"])
    after = np.flatnonzero(created > events["server_restarted"])
    last_before, first_after = (int(before[-1]) if before.size else None), (int(after[0]) if after.size else None)
    sent_numbers = {int(line.split()[0]) for line in sent.read_text().splitlines() if line.strip()}
    missing = sorted(sent_numbers - set(numbers.tolist()))
    in_outage = [m for m in missing if last_before is not None and first_after is not None
                 and numbers[last_before] < m < numbers[first_after]]
    return {
        "frames_output": int(n),
        "frames_sent": len(sent_numbers),
        "first_output_after_server_up_s": float(output_times[0] - events["server_up"]) if n else None,
        "outage_s": events["server_restarted"] - events["server_killed"],
        "output_gap_s": float(output_times[first_after] - output_times[last_before]) if last_before is not None and first_after is not None else None,
        "first_output_after_restart_s": float(output_times[first_after] - events["server_restarted"]) if first_after is not None else None,
        "missing_in_outage": len(in_outage),
        "missing_outside_outage": len(missing) - len(in_outage),
        "out_of_order": int((np.diff(numbers) <= 0).sum()),
        "latency_ms": {"p50": float(np.percentile(latency_ms, 50)), "p99": float(np.percentile(latency_ms, 99)),
                       "max": float(latency_ms.max())},
        "latency_p50_ms_first_vs_last_window": [windows[0]["p50_ms"], windows[-1]["p50_ms"]] if windows else None,
        "windows": windows,
        "events_s": {k: v - t0 for k, v in events.items()},
        "hdme_messages": [line for line in log.splitlines() if "rtsp://" in line and ": " in line][:20],
        # hdme's own summary: frames, FPS and drops, and its per-stage table (capture → map inside hdme)
        "hdme_summary": [line for line in log.splitlines() if " FPS" in line or line.startswith(("│ infer", "│ end-to-end"))],
        "load_average": os.getloadavg(),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = result["events_s"]
    x = [w["from_s"] + WINDOW / 2 for w in result["windows"]]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(x, [w["p50_ms"] for w in result["windows"]], "o-", label="p50")
    ax.plot(x, [w["p99_ms"] for w in result["windows"]], "s-", label="p99")
    ax.axvspan(ev["server_killed"], ev["server_restarted"], color="red", alpha=0.15, label="server down")
    ax.axvline(ev["server_up"], color="grey", ls="--", label="server first up")
    ax.set_xlabel("seconds since hdme started")
    ax.set_ylabel(f"capture-to-output latency, ms (per {WINDOW:g} s)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


WINDOW = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="How long hdme runs in all.")
    parser.add_argument("--lead", type=float, default=5.0, help="Seconds hdme waits before the server is started.")
    parser.add_argument("--outage", type=float, default=5.0, help="Seconds the server stays down.")
    parser.add_argument("--fps", type=int, default=FPS, help="Frame rate of the stream.")
    parser.add_argument("--hdme-options", default="", help='More options for hdme run, e.g. "--size 120x160".')
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the maps, video and logs in this folder.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hdme-soak-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run_soak(args.seconds, args.lead, args.outage, args.fps, args.hdme_options.split(), work)
    result |= {"fps": args.fps, "hdme_options": args.hdme_options}
    summary = {k: v for k, v in result.items() if k not in ("windows", "hdme_messages")}
    print(json.dumps(summary, indent=1))
    for w in result["windows"]:
        print(f"{w['from_s']:6.0f} s  {w['frames']:4d} frames  p50 {w['p50_ms']:7.1f} ms  p99 {w['p99_ms']:7.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
