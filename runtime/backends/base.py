"""The one interface every inference engine implements.

A backend takes float32 RGB in [0, 1], NCHW, and returns float32 σ/10, N×1×H×W. Backends that
move data to a device also report where the time went (host→device, compute, device→host),
measured after synchronising the device, so the latency benchmark can split the stages.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdme.errors import HdmeError


@dataclass
class InferTimes:
    """Milliseconds per stage of one ``infer``; ``None`` where a stage does not exist (CPU)."""

    h2d: float | None
    compute: float
    d2h: float | None


class Backend(abc.ABC):
    """An inference engine loaded with one model.

    ``multiple``: input sides the engine accepts must be multiples of it (1 = any size);
    ``max_hw``/``min_hw``: the largest/smallest input an engine's profile admits, if it has one;
    ``selection``: a line saying why this backend and model file were chosen.
    """

    name: str = "backend"
    precision: str = "fp32"
    device: str = "cpu"
    multiple: int = 1
    min_hw: tuple[int, int] | None = None
    max_hw: tuple[int, int] | None = None
    selection: str = ""

    def __init__(self, model_path: Path | str) -> None:
        self.model_path = Path(model_path)

    @classmethod
    def load(cls, model_path: Path | str, precision: str | None = None, threads: int = 0, **options) -> "Backend":
        """The engine loaded with ``model_path`` at ``precision`` (None: the model's own) using
        ``threads`` CPU threads (0: the engine's default). Engines that run a model only at the
        precision its file records, and use no CPU threads of their own, keep this."""
        engine = cls(model_path, **options)
        if precision not in (None, engine.precision):
            raise HdmeError(f"{model_path} is a {engine.precision} model; {cls.name} runs a model at its file's precision, not {precision}")
        return engine

    @abc.abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray:
        """float32 [B,3,H,W] RGB 0..1 → float32 [B,1,H,W] σ/10."""

    def infer_timed(self, x: np.ndarray) -> tuple[np.ndarray, InferTimes]:
        """``infer`` with its time split by stage; engines that can split it override this."""
        start = time.perf_counter()
        out = self.infer(x)
        return out, InferTimes(None, (time.perf_counter() - start) * 1e3, None)

    def describe(self) -> str:
        return f"{self.name} [{self.device}, {self.precision}] {self.model_path.name}"

    def close(self) -> None:
        """Release engine resources; the backend is unusable afterwards."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_input(x: np.ndarray) -> np.ndarray:
    """The shared input contract, as a contiguous float32 array."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"backend input must be [B,3,H,W], got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)
