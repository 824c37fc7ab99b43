"""The training loop: one process per device, DistributedDataParallel under torchrun, AMP on CUDA,
exact resume, fixed-split validation, TensorBoard + CSV logs, safetensors exports with cards."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hdme.errors import HdmeError
from hdme.io import write_json
from hdme.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hdme.train.data import PairBatches, SyntheticBatches, evaluate, synthetic_split
from hdme.train.models import HDMENet, count_params, create_model, load_state, save_model

LOSSES = ("mse", "l1", "huber")
SCHEDULES = ("step", "cosine")
VAL_COLUMNS = ("mse", "mae", "rmse", "abs_rel", "sq_rel", "rmse_log", "d1", "d2", "d3")
CSV_COLUMNS = ("step", "wall_s", "loss", "lr", "img_per_s") + tuple(f"val_{k}" for k in VAL_COLUMNS)


@dataclass
class TrainConfig:
    model: str = "hdme-edge"
    out: str = "runs/train"
    data: str | None = None  # a folder of pairs (or `hdme data make` output); None = synthetic
    recipe: str = "hdme"  # synthesis recipe name or JSON path (training stream and validation split)
    sources: str | None = None  # folder of all-in-focus photos for the stream; None = bundled samples
    steps: int | None = None
    epochs: int | None = None
    batch: int = 8
    size: int = 256
    lr: float = 1e-3
    schedule: str = "step"  # the paper's ×0.1 at 1/3 and 2/3, or cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01  # cosine floor
    weight_decay: float = 0.0
    loss: str = "mse"
    huber_delta: float = 0.05  # on σ/10, i.e. 0.5 px
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    amp: bool | None = None  # None = on where CUDA is used
    channels_last: bool | None = None  # None = on where CUDA is used
    compile: bool = False
    workers: int = 2
    seed: int = 0
    val_every: int = 500
    val_count: int = 64
    val_size: int | None = None  # None = size
    ckpt_every: int = 500
    log_every: int = 20
    max_minutes: float | None = None
    init: str | None = None
    resume: bool = False
    model_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise HdmeError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**values)

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise HdmeError(f"--loss must be one of {', '.join(LOSSES)}, not '{self.loss}'")
        if self.schedule not in SCHEDULES:
            raise HdmeError(f"schedule must be one of {', '.join(SCHEDULES)}, not '{self.schedule}'")
        if self.steps is not None and self.epochs is not None:
            raise HdmeError("give --steps or --epochs, not both")
        if self.epochs is not None and self.data is None:
            raise HdmeError("--epochs needs --data (the synthetic stream has no epochs; use --steps)")
        if self.steps is None and self.epochs is None:
            raise HdmeError("give --steps N (or --epochs N with --data)")
        for name in ("batch", "size", "val_every", "ckpt_every", "log_every"):
            if getattr(self, name) <= 0:
                raise HdmeError(f"--{name.replace('_', '-')} must be positive")


def loss_fn(name: str, delta: float):
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    return lambda pred, target: F.huber_loss(pred, target, delta=delta)


def lr_factor(config: TrainConfig, total: int):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "step":
            return 0.1 ** sum(step >= total * k / 3 for k in (1, 2))
        t = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


class Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) or a single process."""

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
        """True on every rank if it is true on any (so all ranks stop at the same step)."""
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

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def hardware(d: Distributed) -> dict[str, Any]:
    info = {"device": d.device.type, "processes": d.world, "cpu": platform.processor() or platform.machine(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    if d.cuda:
        info["gpu"] = torch.cuda.get_device_name(d.device)
    return info


def recipe_card(recipe: Any, name: str) -> Any:
    if dataclasses.is_dataclass(recipe):
        return {"name": name, **dataclasses.asdict(recipe)}
    return name


class CsvLog:
    def __init__(self, path: Path, resume_step: int):
        rows = []
        if path.is_file() and resume_step > 0:
            # A resumed run rewrites what the interrupted one logged after its last checkpoint.
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        self.fh = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=CSV_COLUMNS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


@dataclass
class TrainResult:
    model: HDMENet  # this rank's trained model
    card: dict[str, Any]  # the final model card (empty on ranks other than 0)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run into ``config.out``."""
    config.check()
    d = Distributed()
    try:
        return _train(config, d)
    finally:
        d.close()


def _train(config: TrainConfig, d: Distributed) -> TrainResult:
    from hdme.train.synth import get_recipe

    run = Path(config.out)
    ckpt_path = run / "last.ckpt"
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    device = d.device
    use_amp = d.cuda if config.amp is None else (config.amp and d.cuda)
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    channels_last = d.cuda if config.channels_last is None else config.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model: HDMENet = create_model(config.model, **config.model_overrides)
    if config.init:
        state = load_state(config.init)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise HdmeError(f"{config.init}: weights do not fit {config.model} ({str(exc).splitlines()[0]})") from None
    model.to(device=device, memory_format=memory_format)
    recipe = get_recipe(config.recipe)

    if config.data:
        root = Path(config.data)
        root = root / "train" if (root / "train").is_dir() else root
        batches: Any = PairBatches(root, config.size, config.batch, config.seed, d.rank, d.world, config.workers)
        total = config.steps if config.steps is not None else config.epochs * batches.steps_per_epoch
    else:
        batches = SyntheticBatches(recipe, config.size, config.batch, config.seed, d.rank, device=device,
                                   sources=config.sources)
        total = config.steps

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step, best_mae, wall_before = 0, math.inf, 0.0
    if config.resume:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["model_name"] != config.model:
            raise HdmeError(f"{ckpt_path} is a {ckpt['model_name']} run, not {config.model}")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, best_mae, wall_before = ckpt["step"], ckpt["best_mae"], ckpt["wall_s"]
        if len(ckpt["rng"]) == d.world:
            set_rng_state(ckpt["rng"][d.rank])

    if d.main:
        write_json(run / "config.json", dataclasses.asdict(config) | {"total_steps": total, "world_size": d.world})

    net = model
    if d.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.cuda else None)
    if config.compile:
        net = torch.compile(net)
    criterion = loss_fn(config.loss, config.huber_delta)

    val_images = val_sigmas = None
    writer = log = None
    if d.main:
        # Bundled sources and a fixed seed: the same validation images whatever the run trains on.
        val_images, val_sigmas = synthetic_split(recipe, config.val_size or config.size, config.val_count)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tb"), purge_step=step if step else None)
        log = CsvLog(run / "metrics.csv", step)
        print(f"{config.model}: {count_params(model) / 1e6:.3f} M params, {d.world} process(es) on {device}, "
              f"steps {step}→{total}, batch {config.batch}×{d.world}, {config.size}² px", flush=True)

    card_base = {
        "recipe": recipe_card(recipe, config.recipe) if not config.data else {"data": str(config.data)},
        "seed": config.seed, "train": dataclasses.asdict(config), "hardware": hardware(d),
    }
    last_val: dict[str, float] = {}

    def wall() -> float:
        return wall_before + time.monotonic() - started

    def checkpoint() -> None:
        rng = d.gather(rng_state())
        if d.main:
            save_checkpoint(ckpt_path, {
                "model_name": config.model, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "best_mae": best_mae, "wall_s": wall(), "rng": rng,
            })

    def export(name: str, metrics: dict[str, float]) -> None:
        save_model(model, run / f"{name}.safetensors", card_base | {
            "steps": step, "wall_s": round(wall(), 1), "validation": metrics,
        })

    def validate() -> None:
        nonlocal best_mae, last_val
        if not d.main:
            return
        last_val = evaluate(model, val_images, val_sigmas, device, amp_dtype=amp_dtype)
        for k, v in last_val.items():
            writer.add_scalar(f"val/{k}", v, step)
        log.write({"step": step, "wall_s": round(wall(), 1)} | {f"val_{k}": v for k, v in last_val.items()})
        if last_val["mae"] < best_mae:
            best_mae = last_val["mae"]
            export("best", last_val)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        disable=not (d.main and sys.stderr.isatty()))
    deadline = None if config.max_minutes is None else started + 60.0 * config.max_minutes
    net.train()
    window_loss, window_n, window_t = 0.0, 0, time.monotonic()
    try:
        with progress:
            task = progress.add_task("train", total=total, completed=step, status="")
            while step < total:
                image, sigma = batches.batch_at(step)
                image = image.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                target = sigma.to(device, non_blocking=True) / 10.0
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    pred = net(image)
                loss = criterion(pred.float(), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                window_loss += float(loss.detach())
                window_n += 1

                if step % config.log_every == 0 or step == total:
                    elapsed = time.monotonic() - window_t
                    rate = window_n * config.batch * d.world / max(elapsed, 1e-9)
                    mean_loss = window_loss / window_n
                    lr = scheduler.get_last_lr()[0]
                    if d.main:
                        writer.add_scalar("train/loss", mean_loss, step)
                        writer.add_scalar("train/lr", lr, step)
                        writer.add_scalar("train/img_per_s", rate, step)
                        log.write({"step": step, "wall_s": round(wall(), 1), "loss": mean_loss, "lr": lr, "img_per_s": round(rate, 2)})
                        progress.update(task, status=f"loss {mean_loss:.5f}  {rate:.1f} img/s")
                        if progress.disable:  # no terminal (a background run): log lines instead
                            print(f"step {step}/{total} loss {mean_loss:.5f} lr {lr:.2e} {rate:.1f} img/s", flush=True)
                    window_loss, window_n, window_t = 0.0, 0, time.monotonic()
                if d.main:
                    progress.update(task, completed=step)

                if step % config.val_every == 0 and step < total:
                    validate()
                out_of_time = d.any(deadline is not None and time.monotonic() >= deadline)
                if step % config.ckpt_every == 0 and step < total and not out_of_time:
                    checkpoint()
                if out_of_time:
                    if d.main:
                        print(f"time budget of {config.max_minutes} min reached at step {step}", flush=True)
                    break

        validate()
        checkpoint()
        card: dict[str, Any] = {}
        if d.main:
            export("final", last_val)
            card = json.loads((run / "final.json").read_text())
    finally:
        if d.main:
            writer.close()
            log.close()
    return TrainResult(model, card)
