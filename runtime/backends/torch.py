"""PyTorch: the reference backend and GPU fallback. torch is imported only when this is chosen."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hdme.errors import HdmeError, require
from hdme.runtime.backends.base import Backend, InferTimes, check_input


class TorchBackend(Backend):
    """``device``: cpu | cuda[:N] (default: cuda when available). ``precision``: fp32, or fp16/bf16
    autocast on CUDA. ``cuda_graphs``: capture one CUDA graph per input shape and replay it.
    ``threads``: CPU threads (0 = torch's default)."""

    name = "torch"

    def __init__(self, model: str | Path, device: str | None = None, precision: str = "fp32",
                 cuda_graphs: bool = False, threads: int = 0) -> None:
        super().__init__(model)
        self.torch = torch = require("torch", "train")
        from hdme.train.models import load_model

        if threads:
            torch.set_num_threads(int(threads))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise HdmeError("torch was asked for CUDA but this torch build sees no CUDA GPU")
        on_cuda = self.device.startswith("cuda")
        if precision not in ("fp32", "fp16", "bf16"):
            raise HdmeError(f"the torch backend runs fp32, fp16 or bf16, not '{precision}'")
        if precision != "fp32" and not on_cuda:
            raise HdmeError(f"{precision} autocast needs a CUDA device; use fp32 on the CPU")
        if cuda_graphs and not on_cuda:
            raise HdmeError("CUDA graphs need a CUDA device")
        self.precision = precision
        self.model = load_model(str(model)).eval().to(self.device)
        self.multiple = 1  # the network pads to its own multiple inside forward
        self.use_graphs = bool(cuda_graphs)
        self._autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._graphs: dict[tuple[int, ...], tuple] = {}

    @classmethod
    def load(cls, model: str | Path, precision: str | None = None, threads: int = 0, **options) -> "TorchBackend":
        return cls(model, precision=precision or "fp32", threads=threads, **options)

    def _forward(self, x_dev):
        torch = self.torch
        with torch.inference_mode():
            if self._autocast_dtype is None:
                return self.model(x_dev)
            # The autocast weight cache would hold tensors made outside a CUDA-graph capture.
            with torch.autocast("cuda", dtype=self._autocast_dtype, cache_enabled=False):
                return self.model(x_dev).float()

    def _graph_for(self, shape: tuple[int, ...]):
        torch = self.torch
        if shape not in self._graphs:
            static_in = torch.zeros(shape, device=self.device)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up on a side stream, as CUDA-graph capture requires
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[shape] = (graph, static_in, static_out)
        return self._graphs[shape]

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize(self.device)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.infer_timed(x)[0]

    def infer_timed(self, x: np.ndarray) -> tuple[np.ndarray, InferTimes]:
        torch = self.torch
        x = check_input(x)
        on_cuda = self.device.startswith("cuda")
        t0 = time.perf_counter()
        x_host = torch.from_numpy(x)
        if self.use_graphs:
            graph, static_in, static_out = self._graph_for(tuple(x.shape))
            static_in.copy_(x_host.pin_memory(), non_blocking=True)
        else:
            x_dev = x_host.to(self.device, non_blocking=on_cuda)
        self._sync()
        t1 = time.perf_counter()
        if self.use_graphs:
            graph.replay()
            y = static_out
        else:
            y = self._forward(x_dev)
        self._sync()
        t2 = time.perf_counter()
        out = y.float().cpu().numpy()
        t3 = time.perf_counter()
        if not on_cuda:
            return out, InferTimes(None, (t3 - t0) * 1e3, None)
        return out, InferTimes((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)

    def close(self) -> None:
        self._graphs.clear()
        self.model = None
