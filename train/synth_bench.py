"""Throughput of the synthetic training stream: fresh samples/s per device, size and number of
drawing processes, with the split between drawing (CPU), rendering and degradation (device).

The split is measured one chunk at a time in this process: drawing as CPU time of the drawing
thread (what one core spends per sample, whatever else the machine runs), rendering (shuffle +
Eq. 4) and degradation (noise, Bayer, JPEG) as CPU time when the device is the CPU and as
synchronised wall time on an accelerator. The end-to-end figure is the training stream itself
(``SyntheticBatches``, every sample fresh) timed on the wall clock, with its drawing processes.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Callable

import torch

from hdme.errors import HdmeError
from hdme.train.data import SyntheticBatches, draw_chunk
from hdme.train.synth.noise import noise_batch
from hdme.train.synth.recipe import SynthRecipe
from hdme.train.synth.stream import render_clean

PHASES = ("draw", "render", "degrade")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    """Seconds of work on ``device``: this process's CPU time for the CPU, wall time otherwise."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def phase_split(recipe: SynthRecipe, device: torch.device, size: int, batch: int, chunks: int, source) -> dict[str, float]:
    """Milliseconds per sample of each phase over ``chunks`` chunks, after one untimed chunk."""
    totals = dict.fromkeys(PHASES, 0.0)
    clock = _clock(device)
    for k in range(chunks + 1):
        t0 = time.thread_time()
        draw = draw_chunk(recipe, size, batch, 0, 0, k, source)
        t1 = time.thread_time()
        generator = torch.Generator(device=device).manual_seed(k)
        _sync(device)
        t2 = clock()
        clean = render_clean(recipe, draw, generator, device)
        _sync(device)
        t3 = clock()
        noise_batch(clean.image, draw.noise, generator)
        _sync(device)
        t4 = clock()
        if k:  # the first chunk builds the kernel spectra and FFT plans
            for phase, seconds in zip(PHASES, (t1 - t0, t3 - t2, t4 - t3)):
                totals[phase] += seconds
    return {phase: 1000.0 * seconds / (chunks * batch) for phase, seconds in totals.items()}


def stream_rate(recipe: SynthRecipe, device: torch.device, size: int, batch: int, chunks: int, workers: int,
                source) -> float:
    """Fresh samples/s of the training stream over ``chunks`` chunks, after start-up and as many
    chunks as the loader holds ready (two per drawing process), so that what was drawn during
    start-up does not count as speed."""
    stream = SyntheticBatches(recipe, size, batch, seed=0, device=device, sources=source, workers=workers)
    warmup = 1 + 2 * workers
    for step in range(warmup):
        stream.batch_at(step)
    _sync(device)
    start = time.perf_counter()
    for step in range(warmup, warmup + chunks):
        stream.batch_at(step)
    _sync(device)
    return chunks * batch / (time.perf_counter() - start)


def bench_synth(recipe: SynthRecipe, devices: list[str], sizes: list[int], workers: list[int], batch: int,
                chunks: int, source, on_progress: Callable[[str], None] = lambda _: None) -> tuple[list[dict], dict]:
    """One row per (device, size, workers) and the host description."""
    rows = []
    for name in devices:
        device = torch.device(name)
        for size in sizes:
            on_progress(f"{device} {size}²: phases")
            split = phase_split(recipe, device, size, batch, chunks, source)
            for w in workers:
                on_progress(f"{device} {size}²: stream with {w} drawing process(es)")
                fresh = stream_rate(recipe, device, size, batch, chunks, w, source)
                rows.append({
                    "device": str(device), "size": size, "workers": w, "batch": batch,
                    "draw_ms": split["draw"], "render_ms": split["render"], "degrade_ms": split["degrade"],
                    # what one drawing core and the device each sustain alone, from the split
                    "draw_per_core_per_s": 1000.0 / split["draw"],
                    "device_per_s": 1000.0 / (split["render"] + split["degrade"]),
                    "fresh_per_s": fresh,
                })
    meta = {
        "recipe": recipe.name, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_1min": round(os.getloadavg()[0], 2),
        "accelerators": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return rows, meta


def check_devices(devices: list[str]) -> list[str]:
    """The devices as torch names; an unknown or absent one is an error in its own terms."""
    names = []
    for name in devices:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise HdmeError(f"'{name}' is not a torch device (cpu, cuda, cuda:1, …)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise HdmeError(f"'{name}': no CUDA device on this machine")
        names.append(str(device))
    return names
