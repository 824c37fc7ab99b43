"""The training loop: one process per device, DistributedDataParallel under torchrun, AMP on CUDA,
exact resume, fixed-split validation, safetensors exports with model cards.

A run folder holds config.json (the resolved options), last.ckpt (resumable state), metrics.csv
and tb/ (TensorBoard), best.safetensors (lowest validation MAE) and final.safetensors, each with
its JSON card.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hdme.conventions import SIGMA_BIN_EDGES, SIGMA_SCALE
from hdme.errors import HdmeError
from hdme.io import make_folder, write_json
from hdme.train.config import TrainConfig
from hdme.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hdme.train.data import VAL_SEED, PairBatches, SyntheticBatches, evaluate
from hdme.train.distributed import Distributed
from hdme.train.models import HDMENet, count_params, create_model, load_init_state, save_model
from hdme.train.runlog import RunLog



def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), where bf16 autocast trains
    faster than fp32; elsewhere oneDNN emulates it."""
    # torch.cpu's feature probes are private; without them the answer is "not known to", i.e. no.
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def binned_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 averaged within each true-σ bin, then over the bins present: every bin weighs the same
    whatever the σ prior, so neither the many small-σ pixels nor the large errors at large σ
    decide the fit alone."""
    edges = torch.tensor(SIGMA_BIN_EDGES[1:-1], device=target.device) / SIGMA_SCALE
    bins = torch.bucketize(target.detach(), edges, right=True).flatten()
    errors = (pred - target).abs().flatten()
    count = torch.zeros(len(SIGMA_BIN_EDGES) - 1, device=target.device).index_add_(0, bins, torch.ones_like(errors))
    total = torch.zeros_like(count).index_add_(0, bins, errors)
    present = count > 0
    return (total[present] / count[present]).mean()


def log_sigma(x: torch.Tensor) -> torch.Tensor:
    """σ/10 → log(1 + σ px) / log(11): 0 and 1 stay put, a px of error at 1 px weighs 5.5× one at
    10 px. Negative outputs (the training output is not clamped) continue the curve's slope at 0,
    so the loss stays finite and pulls them up."""
    return (torch.log1p(SIGMA_SCALE * x.clamp(min=0)) + SIGMA_SCALE * x.clamp(max=0)) / math.log1p(SIGMA_SCALE)


def log_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between log(1 + σ) of prediction and truth. An L1 loss fits the median of what the truth can
    be, under any increasing transform, so this keeps L1's answer where the blur is ambiguous and only
    moves where the network spends its capacity: toward the precision of small σ, which labels past
    10 px cost (RTF's per-pixel errors grew while its bin means held, model card run t). Against L1 (model
    card runs y/w on the same samples, x/t): RTF 5 % / 12 % better, blur past 7 px a little lower."""
    return F.l1_loss(log_sigma(pred), log_sigma(target))


def loss_fn(name: str, delta: float):
    if name == "binned_l1":
        return binned_l1_loss
    if name == "log_l1":
        return log_l1_loss
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    return lambda pred, target: F.huber_loss(pred, target, delta=delta)


def lr_factor(config: TrainConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "step":
        return 0.1 ** sum(step >= total * k / 3 for k in (1, 2))
    t = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: torch.nn.Module, fresh: list[str], lr: float, fresh_factor: float) -> list[dict[str, Any]]:
    """The trainable parameters as Adam's groups: one, or two when the modules named in ``fresh``
    (what the warm start left at its identity start) learn at ``fresh_factor`` times ``lr``."""
    def is_fresh(name: str) -> bool:
        return any(name == part or name.startswith(part + ".") for part in fresh)

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if fresh_factor == 1.0 or not any(is_fresh(name) for name, _ in named):
        return [{"params": [p for _, p in named], "lr": lr}]
    return [{"params": [p for name, p in named if not is_fresh(name)], "lr": lr},
            {"params": [p for name, p in named if is_fresh(name)], "lr": lr * fresh_factor}]


class TrainingStopped(KeyboardInterrupt):
    """A run stopped on request (Ctrl-C, SIGTERM) at a step boundary, its state checkpointed."""

    def __init__(self, step: int, total: int, checkpoint: Path) -> None:
        super().__init__(f"stopped at step {step} of {total}; {checkpoint} holds the run")
        self.step, self.total, self.checkpoint = step, total, checkpoint


class StopRequests:
    """While active, SIGINT and SIGTERM ask the run to stop after the current step instead of
    killing it mid-step, which would lose the steps since the last checkpoint; a second signal
    stops at once. A SIGINT the parent ignores (a background job) stays ignored."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainResult:
    model: HDMENet  # this rank's trained model (its weight average with ema_decay)
    card: dict[str, Any]  # the final model card (empty on ranks other than 0)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run into ``config.out``."""
    config.check()
    d = Distributed()
    try:
        return Trainer(config, d).run()
    finally:
        d.close()


class Trainer:
    def __init__(self, config: TrainConfig, d: Distributed):
        from hdme.train.synth import get_recipe

        self.config, self.d = config, d
        self.run_dir = Path(config.out)
        self.ckpt_path = self.run_dir / "last.ckpt"
        self.device = d.device
        use_amp = d.cuda if config.amp is None else config.amp
        if not use_amp:
            self.amp_dtype = None
        elif d.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = torch.bfloat16  # the one type CPU autocast speeds up
        # On the CPU, bf16 convolutions are fast only in channels-last layout (oneDNN's blocked kernels).
        channels_last = (d.cuda or use_amp) if config.channels_last is None else config.channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model: HDMENet = create_model(config.model, **config.model_overrides)
        fresh = load_init_state(self.model, config.init) if config.init else []
        self.model.to(device=self.device, memory_format=self.memory_format)
        # Real-photo accuracy swings from one checkpoint to the next at a useful learning rate;
        # an average of the recent weights is steadier than any single one.
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if config.ema_decay > 0 else None
        # state_dict() tensors are the modules' own parameters and buffers (loading copies into
        # them), so the pairs hold for the whole run instead of being rebuilt every step.
        self.ema_pairs = list(zip(self.ema.state_dict().values(), self.model.state_dict().values())) if self.ema else []

        self.recipe = get_recipe(config.recipe, training=True)
        if config.data:
            root = Path(config.data)
            root = root / "train" if (root / "train").is_dir() else root
            self.batches: Any = PairBatches(root, config.size, config.batch, config.seed, d.rank, d.world, config.workers)
            self.total = config.steps if config.steps is not None else config.epochs * self.batches.steps_per_epoch
        else:
            from hdme.train.make import open_source

            self.batches = SyntheticBatches(self.recipe, config.size, config.batch, config.seed, d.rank,
                                            device=self.device, sources=open_source(config.source),
                                            echo=config.echo, synth_size=config.synth_size, pool=config.pool,
                                            workers=config.workers)
            self.total = config.steps

        groups = param_groups(self.model, fresh, config.lr, config.fresh_lr_factor)
        self.params = [p for group in groups for p in group["params"]]
        self.optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
        # Reads self.total at every step: --fit-minutes moves it while the run goes.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(config, step, self.total))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.criterion = loss_fn(config.loss, config.huber_delta)
        self.step, self.best_mae, self.wall_before = 0, math.inf, 0.0
        self.data_wait = 0.0  # seconds the steps of this log window spent getting their batch
        self.started = time.monotonic()
        self.last_val: dict[str, Any] = {}  # mean metrics and sigma_bins of the last validation
        if config.resume:
            self.restore()

        self.net: torch.nn.Module = self.model
        if d.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[d.local_rank] if d.cuda else None)
        if config.compile:
            self.net = torch.compile(self.net)

        self.log: RunLog | None = None
        if d.main:
            make_folder(self.run_dir)
            write_json(self.run_dir / "config.json",
                       dataclasses.asdict(config) | {"total_steps": self.total, "world_size": d.world})
            # Bundled sources and a fixed seed: the same validation images whatever the run trains on,
            # built and scored by the evaluation harness as `hdme bench accuracy --dataset SPEC` does.
            from hdme.evaluation import SyntheticSet, synthetic_set

            val_definition = SyntheticSet("synthetic", config.recipe, config.val_size or config.size, config.val_count, VAL_SEED)
            self.val_set = synthetic_set(val_definition)
            self.log = RunLog(self.run_dir, self.step, self.total)
            self.log.say(f"validation set: {val_definition.note} (--dataset '{val_definition.spec}')")
            self.log.say(f"{config.model}: {count_params(self.model) / 1e6:.3f} M params, {d.world} process(es) on "
                         f"{self.device}, steps {self.step}→{self.total}, batch {config.batch}×{d.world}, {config.size}² px, "
                         f"{'fp32' if self.amp_dtype is None else str(self.amp_dtype).removeprefix('torch.') + ' autocast'}")
            if self.amp_dtype is not None and not d.cuda and not cpu_computes_bf16():
                self.log.say("this CPU has no bf16 arithmetic (AVX512-BF16 or AMX): mixed precision is emulated and slower than fp32")
            if fresh:
                self.log.say(f"{config.init}: {', '.join(fresh)} not in these weights, starting as the identity")

    def wall(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    def restore(self) -> None:
        ckpt = load_checkpoint(self.ckpt_path)
        if ckpt["model_name"] != self.config.model:
            raise HdmeError(f"{self.ckpt_path} is a {ckpt['model_name']} run, not {self.config.model}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.best_mae, self.wall_before = ckpt["step"], ckpt["best_mae"], ckpt["wall_s"]
        if self.ema is not None:
            if "ema" not in ckpt:
                raise HdmeError(f"{self.ckpt_path} was written without a weight average (ema_decay 0); resume it with ema_decay 0")
            self.ema.load_state_dict(ckpt["ema"])
        if len(ckpt["rng"]) == self.d.world:
            set_rng_state(ckpt["rng"][self.d.rank])

    def checkpoint(self) -> None:
        rng = self.d.gather(rng_state())
        if self.d.main:
            save_checkpoint(self.ckpt_path, {
                "model_name": self.config.model, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "best_mae": self.best_mae,
                "wall_s": self.wall(), "rng": rng,
            } | ({"ema": self.ema.state_dict()} if self.ema is not None else {}))

    @property
    def evaluated(self) -> HDMENet:
        """The weights that are validated and exported: the average when there is one."""
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def update_ema(self) -> None:
        # A shorter memory early on, so the average does not drag the initial weights along.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for avg, live in self.ema_pairs:
            if avg.is_floating_point():
                avg.lerp_(live, 1.0 - decay)
            else:
                avg.copy_(live)

    def export(self, name: str) -> None:
        config = self.config
        recipe = {"data": str(config.data)} if config.data else {"name": config.recipe, **dataclasses.asdict(self.recipe)}
        save_model(self.evaluated, self.run_dir / f"{name}.safetensors", {
            "recipe": recipe, "steps": self.step, "seed": config.seed, "wall_s": round(self.wall(), 1),
            "hardware": self.d.hardware(), "validation": self.last_val, "train": dataclasses.asdict(config),
        })

    def validate(self) -> None:
        if not self.d.main:
            return
        result = evaluate(self.evaluated, self.val_set, self.device, amp_dtype=self.amp_dtype)
        self.last_val = result["mean"] | {"sigma_bins": result["sigma_bins"]}
        self.log.validation(self.step, self.wall(), result["mean"], result["sigma_bins"])
        if self.last_val["mae"] < self.best_mae:
            self.best_mae = self.last_val["mae"]
            self.export("best")

    def fit_total(self, since: tuple[int, float], end_cost: float) -> None:
        """Re-estimate the step total so that the run, its last validation and export included,
        ends at ``fit_minutes`` of wall time, from the speed measured since ``since`` (step, wall)."""
        step0, wall0 = since
        if self.step <= step0:
            return
        seconds_per_step = (self.wall() - wall0) / (self.step - step0)
        left = 60.0 * self.config.fit_minutes - self.wall() - end_cost
        total = min(self.config.steps, self.step + max(0, int(left / seconds_per_step)))  # ≤ 0 left: stop here
        self.total = self.d.gather(total)[0]  # rank 0's estimate, so every rank stops at the same step
        if self.log is not None:
            self.log.set_total(self.total)

    def train_step(self) -> torch.Tensor:
        fetch = time.monotonic()
        image, sigma = self.batches.batch_at(self.step)
        self.data_wait += time.monotonic() - fetch
        image = image.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        target = sigma.to(self.device, non_blocking=True) / SIGMA_SCALE
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            pred = self.net(image)
        loss = self.criterion(pred.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.update_ema()
        self.step += 1
        return loss.detach()  # a tensor: reading it every step would stall a GPU

    def run(self) -> TrainResult:
        config, d = self.config, self.d
        deadline = None if config.max_minutes is None else self.started + 60.0 * config.max_minutes
        self.net.train()
        losses, window_start, fresh_start = [], time.monotonic(), self.batches.fresh_samples
        fit_since: tuple[int, float] | None = None  # speed is measured from the end of the first window on
        end_cost = 0.0  # seconds of the last validation and checkpoint, kept free at the end of a fitted run
        last_ckpt = time.monotonic()
        try:
            with StopRequests() as stop:
                while self.step < self.total:
                    losses.append(self.train_step())
                    if self.step % config.log_every == 0 or self.step == self.total:
                        seconds = max(time.monotonic() - window_start, 1e-9)
                        rate = len(losses) * config.batch * d.world / seconds
                        fresh = (self.batches.fresh_samples - fresh_start) * d.world / seconds
                        if d.main:
                            self.log.train(self.step, self.wall(), float(torch.stack(losses).mean()),
                                           self.scheduler.get_last_lr()[0], rate, fresh, self.data_wait)
                        losses, window_start, fresh_start, self.data_wait = [], time.monotonic(), self.batches.fresh_samples, 0.0
                        if config.fit_minutes is not None:
                            if fit_since is None:
                                fit_since = (self.step, self.wall())
                            else:
                                self.fit_total(fit_since, end_cost)
                    if d.main:
                        self.log.advance(self.step)
                    out_of_time = deadline is not None and d.any(time.monotonic() >= deadline)
                    if out_of_time:
                        if d.main:
                            self.log.say(f"time budget of {config.max_minutes} min reached at step {self.step}")
                        break
                    # A signal to one rank stops them all at one step, agreed at log steps as wall time is.
                    if (d.world == 1 or self.step % config.log_every == 0) and d.any(stop.requested):
                        self.checkpoint()
                        stopped = TrainingStopped(self.step, self.total, self.ckpt_path)
                        if d.main:
                            self.log.say(str(stopped))
                        raise stopped
                    # Wall time is compared at log steps only: agreeing on it costs every rank a sync.
                    ckpt_due = self.step % config.ckpt_every == 0 or (self.step % config.log_every == 0 and d.any(
                        time.monotonic() - last_ckpt >= 60.0 * config.ckpt_minutes))
                    if self.step < self.total and (self.step % config.val_every == 0 or ckpt_due):
                        started = time.monotonic()
                        if self.step % config.val_every == 0:
                            self.validate()
                        if ckpt_due:
                            self.checkpoint()
                            last_ckpt = time.monotonic()
                        window_start = time.monotonic()  # keep validation and checkpoints out of img/s
                        fresh_start, self.data_wait = self.batches.fresh_samples, 0.0
                        end_cost = max(end_cost, window_start - started)
            self.validate()
            self.checkpoint()
            card: dict[str, Any] = {}
            if d.main:
                self.export("final")
                card = json.loads((self.run_dir / "final.json").read_text())
        finally:
            self.batches.close()
            if self.log is not None:
                self.log.close()
        return TrainResult(self.evaluated, card)
