"""What a run reports on rank 0: TensorBoard events, RUN/metrics.csv, and a progress bar (or log
lines when there is no terminal, as in a background run)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from hdme.metrics import MAP_METRICS, SIGMA_BIN_NAMES

# img_per_s: samples trained on (echoed ones included); fresh_per_s: newly made ones; data_wait_s:
# seconds of the log window the steps spent getting their batches.
BIN_QUANTITIES = ("true", "pred", "mae")  # mean true σ px, mean predicted σ px, MAE σ/10 per bin of the true σ
CSV_COLUMNS = (("step", "wall_s", "loss", "lr", "img_per_s", "fresh_per_s", "data_wait_s") + tuple(f"val_{k}" for k in MAP_METRICS)
               + tuple(f"val_{q}_{b}" for b in SIGMA_BIN_NAMES for q in BIN_QUANTITIES))


class RunLog:
    def __init__(self, run: Path, step: int, total: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from torch.utils.tensorboard import SummaryWriter

        path = run / "metrics.csv"
        rows = []
        if path.is_file() and step > 0:
            # A resumed run replaces what the interrupted one logged after its last checkpoint.
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
        self._fh = open(path, "w", newline="")
        self._csv = csv.DictWriter(self._fh, fieldnames=CSV_COLUMNS)
        self._csv.writeheader()
        self._csv.writerows(rows)
        self._fh.flush()
        self._tb = SummaryWriter(str(run / "tb"), purge_step=step or None)
        self.total = total
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not sys.stderr.isatty(),
        )
        self._task = self._progress.add_task("train", total=total, completed=step, status="")
        self._progress.start()

    def train(self, step: int, wall_s: float, loss: float, lr: float, img_per_s: float, fresh_per_s: float,
              data_wait_s: float) -> None:
        self._tb.add_scalar("train/loss", loss, step)
        self._tb.add_scalar("train/lr", lr, step)
        self._tb.add_scalar("train/img_per_s", img_per_s, step)
        self._tb.add_scalar("train/fresh_per_s", fresh_per_s, step)
        self._tb.add_scalar("train/data_wait_s", data_wait_s, step)
        self._row({"step": step, "wall_s": round(wall_s, 1), "loss": loss, "lr": lr, "img_per_s": round(img_per_s, 2),
                   "fresh_per_s": round(fresh_per_s, 2), "data_wait_s": round(data_wait_s, 3)})
        rates = f"{img_per_s:.1f} img/s ({fresh_per_s:.1f} fresh), data wait {data_wait_s:.2f} s"
        self._progress.update(self._task, status=f"loss {loss:.5f}  {rates}")
        if self._progress.disable:
            self.say(f"step {step}/{self.total} loss {loss:.5f} lr {lr:.2e} {rates}")

    def validation(self, step: int, wall_s: float, metrics: dict[str, float], bins: list[dict]) -> None:
        """Mean metrics and the rows of ``SigmaBins`` (bins without pixels are left empty)."""
        for k, v in metrics.items():
            self._tb.add_scalar(f"val/{k}", v, step)
        per_bin = {f"val_{q}_{b['bin']}": b[q] for b in bins for q in BIN_QUANTITIES if b[q] is not None}
        for key, v in per_bin.items():
            self._tb.add_scalar(f"val_bins/{key[4:]}", v, step)
        self._row({"step": step, "wall_s": round(wall_s, 1)} | {f"val_{k}": v for k, v in metrics.items()} | per_bin)
        by_bin = ", ".join(f"{b['bin']} {b['true']:.2f}→{b['pred']:.2f}" for b in bins if b["true"] is not None)
        self.say(f"step {step} validation: " + " ".join(f"{k} {metrics[k]:.4f}" for k in ("mae", "rmse", "d1"))
                 + f"; σ px true→predicted by bin: {by_bin}")

    def set_total(self, total: int) -> None:
        self.total = total
        self._progress.update(self._task, total=total)

    def advance(self, step: int) -> None:
        self._progress.update(self._task, completed=step)

    def say(self, line: str) -> None:
        if self._progress.disable:
            print(line, flush=True)
        else:
            self._progress.console.print(line)

    def _row(self, row: dict[str, Any]) -> None:
        self._csv.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
        self._fh.flush()

    def close(self) -> None:
        self._progress.stop()
        self._tb.close()
        self._fh.close()
