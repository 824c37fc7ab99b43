"""CLI of the training stage: ``hdme data …`` and ``hdme train``. torch is imported inside commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from hdme.console import make_console
from hdme.errors import HdmeError
from hdme.train.config import TrainConfig


def read_train_config(path: Path) -> dict:
    """Training options from a JSON config: its "train" object. A "data" object beside it is a
    synthesis recipe (train/configs/*.json) and becomes the run's recipe unless one is named."""
    if not path.is_file():
        raise HdmeError(f"{path}: no such config file")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HdmeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict) or set(values) - {"train", "data"}:
        raise HdmeError(f"{path}: a config is a JSON object with a \"train\" and/or a \"data\" (recipe) object")
    section = dict(values.get("train", {}))
    if "data" in values:
        section.setdefault("recipe", str(path))
    return section


def saved_run_config(run: Path) -> dict:
    """The options a run was started with (RUN/config.json), so ``--out RUN --resume`` suffices."""
    path = run / "config.json"
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HdmeError(f"{path}: not valid JSON ({exc})") from None
    for key in ("total_steps", "world_size", "resume"):  # written for the record, not options
        values.pop(key, None)
    return values


def _default(name: str) -> str:
    """What ``hdme train --help`` shows as an option's default: TrainConfig's, which a config file
    or the flag replaces."""
    value = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)
    return "none" if value is None else str(value)


def train_command(
    model: Optional[str] = typer.Option(None, "--model", show_default=_default("model"), help="Variant: hdme-paper, hdme-w18, hdme-edge, hdme-tiny."),
    out: Optional[Path] = typer.Option(None, "--out", show_default=_default("out"), help="Run folder (config.json, last.ckpt, metrics.csv, tb/, best/final.safetensors)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of image/ + defocus/ pairs, or `hdme data make` output (its train/)."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Train on the on-the-fly synthetic stream (the default without --data)."),
    steps: Optional[int] = typer.Option(None, "--steps", show_default=_default("steps"), help="Optimiser steps."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs over --data."),
    batch: Optional[int] = typer.Option(None, "--batch", show_default=_default("batch"), help="Batch per process."),
    size: Optional[int] = typer.Option(None, "--size", show_default=_default("size"), help="Training crop side, px."),
    lr: Optional[float] = typer.Option(None, "--lr", show_default=_default("lr"), help="Adam learning rate."),
    schedule: Optional[str] = typer.Option(None, "--schedule", show_default=_default("schedule"), help="step (×0.1 at 1/3 and 2/3, the paper's) or cosine."),
    loss: Optional[str] = typer.Option(None, "--loss", show_default=_default("loss"), help="mse (the paper's), l1, huber, binned_l1 (L1 weighted equally per true-σ bin) or log_l1 (L1 on log(1 + σ))."),
    recipe: Optional[str] = typer.Option(None, "--recipe", show_default=_default("recipe"), help="Synthesis recipe (name or JSON) for the stream and the validation split."),
    source: Optional[str] = typer.Option(None, "--source", show_default=_default("source"), help="Photos for the synthetic stream: bundled (default), a folder, or coco:DIR."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON config; its \"train\" section sets defaults that flags override."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/last.ckpt exactly, with the options in OUT/config.json unless given again."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from these weights (.safetensors), e.g. to fine-tune."),
    fresh_lr_factor: Optional[float] = typer.Option(None, "--fresh-lr-factor", show_default=_default("fresh_lr_factor"), help="Learning rate of what --init leaves at its identity start (added blocks, a new global context) relative to --lr."),
    val_every: Optional[int] = typer.Option(None, "--val-every", show_default=_default("val_every"), help="Validate every K steps."),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", show_default=_default("ckpt_every"), help="Checkpoint every K steps."),
    ckpt_minutes: Optional[float] = typer.Option(None, "--ckpt-minutes", show_default=_default("ckpt_minutes"), help="Also checkpoint after M minutes of wall time since the last one."),
    seed: Optional[int] = typer.Option(None, "--seed", show_default=_default("seed"), help="Seed of the initial weights, the synthetic stream and the batch order."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision: bf16 (else fp16) on CUDA, default on there; bf16 on the CPU, faster where it has AVX512-BF16 or AMX."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    workers: Optional[int] = typer.Option(None, "--workers", show_default=_default("workers"), help="Processes drawing the synthetic stream's scenes ahead of the steps (rendering runs on the training device) or loading --data; 0 draws in the training process."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", show_default=_default("max_minutes"), help="Stop cleanly (checkpoint + export) after this wall time."),
    fit_minutes: Optional[float] = typer.Option(None, "--fit-minutes", show_default=_default("fit_minutes"), help="End the run, learning-rate schedule included, after this wall time: the step total follows the measured speed, up to --steps."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", show_default=_default("ema_decay"), help="Validate and export a moving average of the weights (e.g. 0.999); 0 = off."),
) -> None:
    """Train an HDME-Net variant (single process, or under `torchrun --nproc_per_node K`)."""
    from hdme.train.trainer import TrainingStopped, train

    if data is not None and synthetic:
        raise HdmeError("--data and --synthetic exclude each other")
    values = saved_run_config(out) if resume and out is not None else {}
    values.update(read_train_config(config) if config else {})
    flags = {
        "model": model, "out": out, "data": data, "steps": steps, "epochs": epochs, "batch": batch, "size": size,
        "lr": lr, "schedule": schedule, "loss": loss, "recipe": recipe, "source": source, "init": init, "fresh_lr_factor": fresh_lr_factor, "val_every": val_every,
        "ckpt_every": ckpt_every, "ckpt_minutes": ckpt_minutes, "seed": seed, "amp": amp, "workers": workers, "max_minutes": max_minutes,
        "fit_minutes": fit_minutes, "ema_decay": ema_decay,
    }
    values.update({k: str(v) if isinstance(v, Path) else v for k, v in flags.items() if v is not None})
    if steps is not None or epochs is not None:
        # A flag for one length replaces the config's other one.
        values["epochs" if steps is not None else "steps"] = None
    if synthetic:
        values["data"] = None
    values["resume"] = resume
    values["compile"] = compile or values.get("compile", False)
    if "out" not in values:
        raise HdmeError("--out RUN is required")
    try:
        train(TrainConfig.from_dict(values))
    except TrainingStopped:
        typer.secho(f"continue with: hdme train --out {values['out']} --resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


data_app = typer.Typer(help="Synthetic defocus datasets (COCO_shuffle and structured scenes).", no_args_is_help=True)


@data_app.command("make")
def data_make(
    out: Path = typer.Argument(..., help="Output folder (rerun the same command to resume)."),
    count: int = typer.Option(..., "--count", help="Number of samples."),
    size: int = typer.Option(256, "--size", help="Square crop side, px."),
    source: str = typer.Option("bundled", "--source", help="bundled (scikit-image photos), a folder, or coco:DIR."),
    recipe: str = typer.Option("paper", "--recipe", help="paper, hdme, away-leaves, away-dof, away-large (evaluation sets away from the training mix), or a recipe JSON file."),
    maps: Optional[str] = typer.Option(None, "--maps", help="Comma-separated map kinds to use, equally weighted: patch,gaussian,segment,depth."),
    noise: Optional[str] = typer.Option(None, "--noise", help="none, paper or camera (default: the recipe's)."),
    shuffle: Optional[str] = typer.Option(None, "--shuffle", help="full, rowcol or none (default: the recipe's)."),
    save_sharp: bool = typer.Option(False, "--save-sharp", help="Also write the all-in-focus image of every sample."),
    flat: bool = typer.Option(False, "--flat", help="Only the blurred images, straight into OUT (a calibration set)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the whole set: the same seed gives the same files."),
    workers: int = typer.Option(1, "--workers", help="Parallel processes."),
) -> None:
    """Write a synthetic dataset: OUT/{train,val,test}/{image,defocus[,sharp]}/NAME.png + manifest.json."""
    from hdme.errors import require

    require("torch", "train")
    from hdme.train.make import MakeArgs, make_dataset

    args = MakeArgs(out=str(out), count=count, size=size, source=source, recipe=recipe,
                    maps=[m.strip() for m in maps.split(",") if m.strip()] if maps else None,
                    noise=noise, shuffle=shuffle, save_sharp=save_sharp, flat=flat, seed=seed, workers=workers)
    manifest = make_dataset(args)
    skipped = manifest["skipped_sources"]
    typer.echo(f"{out}: {sum(manifest['splits'].values())} samples {manifest['splits']}, "
               f"{manifest['resumed_samples']} already there; sources skipped: {skipped['corrupt']} corrupt, "
               f"{skipped['too_small']} too small")


@data_app.command("sharpness")
def data_sharpness(folders: list[Path] = typer.Argument(..., help="Folders of images or `hdme data make` outputs.")) -> None:
    """Laplacian-variance table (min, max, mean, std; before/after shuffle where recorded)."""
    from rich.table import Table

    from hdme.errors import require

    require("torch", "train")
    from hdme.train.make import sharpness_rows

    table = Table(title="Laplacian variance (Eq. 6; > 1000 counts as sharp)")
    for column in ("images", "count", "min", "max", "mean", "std"):
        table.add_column(column, justify="left" if column == "images" else "right")
    for label, s in sharpness_rows(folders):
        table.add_row(label, str(s["count"]), *(f"{s[k]:.1f}" for k in ("min", "max", "mean", "std")))
    make_console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.command("train")(train_command)
