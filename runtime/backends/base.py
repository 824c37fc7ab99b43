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

from hdme.contract import INPUT_NAME, OUTPUT_NAME
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


def shape_text(shape) -> str:
    return "[" + ",".join(str(d) if d is not None else "?" for d in shape) + "]"


def check_model_io(model_path: Path, shape_in, shape_out) -> None:
    """One line unless the model's input is [N,3,H,W] and its output [N,1,H,W]. Free dimensions
    (None, or a name) may be anything; a fixed one must be what the contract says."""
    for name, shape, channels in ((INPUT_NAME, shape_in, 3), (OUTPUT_NAME, shape_out, 1)):
        if len(shape) != 4 or (shape[1] not in (channels, None) and not isinstance(shape[1], str)):
            raise HdmeError(f"{model_path}: '{name}' is {shape_text(shape)}, expected [N,{channels},H,W]")


def checked_output(model_path: Path, run, x: np.ndarray) -> np.ndarray:
    """``run()``'s output, or one line when the model rejects the input (a fixed size other than
    the frame's) or answers with something other than one σ channel of the input's size."""
    try:
        y = run()
    except Exception as exc:  # the engines' own exception types share no base
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HdmeError(f"{model_path.name} failed on a {shape_text(x.shape)} input ({first[:200]})") from None
    if y.ndim != 4 or y.shape[0] != x.shape[0] or y.shape[1] != 1 or y.shape[2:] != x.shape[2:]:
        raise HdmeError(f"{model_path.name}: output '{OUTPUT_NAME}' is {shape_text(y.shape)} for an input "
                        f"of {shape_text(x.shape)}; expected one σ channel of the input's size")
    return y
