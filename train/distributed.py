"""The process group as torchrun describes it (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch
import torch.distributed as dist


class Distributed:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", self.local_rank) if self.cuda else torch.device("cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any, so that all ranks stop at the same step."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def hardware(self) -> dict[str, Any]:
        info = {"device": self.device.type, "processes": self.world, "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
        if self.cuda:
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
