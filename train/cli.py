"""CLI of the training stage: ``hdme data …`` and ``hdme train``. torch is imported inside commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from hdme.errors import HdmeError


def read_train_config(path: Path) -> dict:
    """The ``train`` section of a JSON config (the whole file if it has none). A file that also
    holds a synthesis recipe (a "data" key, as train/configs/*.json) is the run's recipe."""
    if not path.is_file():
        raise HdmeError(f"{path}: no such config file")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HdmeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(values, dict):
        raise HdmeError(f"{path}: a config is a JSON object")
    section = dict(values.get("train", values))
    if "data" in values and "train" in values:
        section.setdefault("recipe", str(path))
    return section


def train_command(
    model: Optional[str] = typer.Option(None, "--model", help="Variant: hdme-paper, hdme-w18, hdme-edge, hdme-tiny."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (config.json, last.ckpt, metrics.csv, tb/, best/final.safetensors)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder of image/ + defocus/ pairs, or `hdme data make` output (its train/)."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Train on the on-the-fly synthetic stream (the default without --data)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs over --data."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch per process."),
    size: Optional[int] = typer.Option(None, "--size", help="Training crop side, px."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="step (×0.1 at 1/3 and 2/3, the paper's) or cosine."),
    loss: Optional[str] = typer.Option(None, "--loss", help="mse (the paper's), l1 or huber."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Synthesis recipe (name or JSON) for the stream and the validation split."),
    sources: Optional[Path] = typer.Option(None, "--sources", help="Folder of all-in-focus photos for the synthetic stream (default: bundled)."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON config; its \"train\" section sets defaults that flags override."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/last.ckpt exactly."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from these weights (.safetensors), e.g. to fine-tune."),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every K steps."),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", help="Checkpoint every K steps."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (bf16, else fp16) on CUDA; default on there."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data-loading processes for --data."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop cleanly (checkpoint + export) after this wall time."),
) -> None:
    """Train an HDME-Net variant (single process, or under `torchrun --nproc_per_node K`)."""
    from hdme.train.trainer import TrainConfig, train

    if data is not None and synthetic:
        raise HdmeError("--data and --synthetic exclude each other")
    values = read_train_config(config) if config else {}
    flags = {
        "model": model, "out": out, "data": data, "steps": steps, "epochs": epochs, "batch": batch, "size": size,
        "lr": lr, "schedule": schedule, "loss": loss, "recipe": recipe, "sources": sources, "init": init, "val_every": val_every,
        "ckpt_every": ckpt_every, "seed": seed, "amp": amp, "workers": workers, "max_minutes": max_minutes,
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
    train(TrainConfig.from_dict(values))


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
