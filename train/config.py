"""The options of a training run, checked: no torch here, so the command line can show their defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hdme.errors import HdmeError

LOSSES = ("mse", "l1", "huber", "binned_l1", "log_l1")
SCHEDULES = ("step", "cosine")


@dataclass
class TrainConfig:
    model: str = "hdme-edge"
    out: str = "runs/train"
    data: str | None = None  # a folder of pairs (or `hdme data make` output); None = synthetic
    recipe: str = "hdme"  # synthesis recipe name or JSON path (training stream and validation split)
    source: str = "bundled"  # all-in-focus photos for the stream: "bundled", a folder or "coco:DIR"
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
    ema_decay: float = 0.0  # > 0: validate and export an exponential moving average of the weights
    amp: bool | None = None  # None = on where CUDA is used; on the CPU, bf16 autocast
    channels_last: bool | None = None  # None = on with CUDA or amp
    compile: bool = False
    workers: int = 2  # processes drawing the synthetic stream (rendered on the training device), or loading --data
    seed: int = 0
    echo: int = 1  # steps per newly synthesised batch (each sample used this often); > 1 where rendering is the bottleneck
    synth_size: int | None = None  # side the stream renders at before the random crops; None = size
    pool: int = 16  # with echo: samples are drawn from the last `pool` synthesised batches
    val_every: int = 500
    val_count: int = 64
    val_size: int | None = None  # None = size
    ckpt_every: int = 500
    ckpt_minutes: float = 5.0  # also checkpoint after this much wall time, so a killed run loses minutes at most
    log_every: int = 20
    max_minutes: float | None = None
    # End the run, learning-rate schedule included, when its wall time reaches this: the step total
    # is re-estimated from the measured speed as the run goes, and `steps` becomes the most it may take.
    fit_minutes: float | None = None
    init: str | None = None
    resume: bool = False
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # Learning rate of the parts --init leaves at their identity start (added blocks, a new
    # GlobalContext) relative to the rest: a block whose last BatchNorm starts at scale zero is
    # hardly taken up at a fine-tune's rate.
    fresh_lr_factor: float = 1.0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise HdmeError(f"unknown training options: {', '.join(sorted(unknown))}")
        return cls(**values)

    def check(self) -> None:
        if self.loss not in LOSSES:
            raise HdmeError(f"loss must be one of {', '.join(LOSSES)}, not '{self.loss}'")
        if self.schedule not in SCHEDULES:
            raise HdmeError(f"schedule must be one of {', '.join(SCHEDULES)}, not '{self.schedule}'")
        if self.steps is not None and self.epochs is not None:
            raise HdmeError("give steps or epochs, not both")
        if self.epochs is not None and self.data is None:
            raise HdmeError("epochs need a dataset folder (the synthetic stream has no epochs; give steps)")
        if self.steps is None and self.epochs is None:
            raise HdmeError("give a number of steps (or of epochs with a dataset folder)")
        if self.fit_minutes is not None and (self.fit_minutes <= 0 or self.steps is None):
            raise HdmeError("fit_minutes must be positive and needs steps (the most the run may take)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise HdmeError("ema_decay must be within [0, 1)")
        for name in ("batch", "size", "val_every", "val_count", "ckpt_every", "log_every", "ckpt_minutes", "fresh_lr_factor"):
            if getattr(self, name) <= 0:
                raise HdmeError(f"{name} must be positive")
        if self.echo < 1 or self.pool < 1 or self.workers < 0:
            raise HdmeError("echo and pool must be at least 1, workers at least 0")
        if self.synth_size is not None and self.synth_size < self.size:
            raise HdmeError(f"synth_size {self.synth_size} is smaller than the crop size {self.size} "
                            "(crops are cut from the rendered samples)")
