import csv
import json
import os
import re
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from hdme.errors import HdmeError  # noqa: E402
from hdme.train import data as train_data  # noqa: E402
from hdme.train.synth import RECIPES  # noqa: E402
from hdme.train.trainer import TrainConfig, train  # noqa: E402

TINY = dict(model="hdme-tiny", recipe="paper", batch=2, size=32, val_count=2, val_every=4, ckpt_every=4,
            log_every=1, workers=0, seed=3)


def _losses(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r["loss"]]


def test_loss_falls_and_run_folder_is_complete(tmp_path):
    run = tmp_path / "run"
    # Echo: each rendered batch serves 4 steps as new crops/flips/turns (rendering dominates here).
    result = train(TrainConfig(out=str(run), steps=24, lr=3e-3, schedule="cosine", min_lr_ratio=1.0, echo=4,
                               synth_size=40, **TINY))
    losses = _losses(run)
    assert len(losses) == 24
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    with open(run / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["loss"]]
    # one step per log window: a window renders a chunk (2 fresh samples) at most every 4 steps on average
    fresh = [float(r["fresh_per_s"]) > 0 for r in rows]
    assert 1 <= sum(fresh) <= 24 // 4 + 1 and fresh[0]
    waits = [float(r["data_wait_s"]) for r in rows]
    assert min(waits) >= 0 and sum(waits) < float(rows[-1]["wall_s"]) + 0.1
    for name in ("config.json", "last.ckpt", "final.safetensors", "final.json", "best.safetensors", "best.json"):
        assert (run / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    card = json.loads((run / "final.json").read_text())
    assert card["model"] == "hdme-tiny" and card["steps"] == 24 and card["seed"] == 3
    assert card["recipe"]["name"] == "paper"
    assert 0 < card["validation"]["mae"] < 1 and card["wall_s"] > 0
    assert card == result.card
    assert json.loads((run / "config.json").read_text())["total_steps"] == 24
    torch.load(run / "last.ckpt", weights_only=True)


def _pairs(root, count=6):
    import numpy as np

    from hdme.conventions import save_sigma_map
    from hdme.images import write_image

    rng = np.random.default_rng(0)
    for i in range(count):
        write_image(root / "image" / f"{i}.png", rng.integers(0, 256, (40, 44, 3), dtype=np.uint8))
        sigma = rng.uniform(0, 10, (40, 44)).astype(np.float32)
        save_sigma_map(root / "defocus" / (f"{i}.png" if i % 2 else f"{i}.npy"), sigma)
    return root


def test_trains_on_pairs_for_epochs(tmp_path):
    data = _pairs(tmp_path / "pairs")
    result = train(TrainConfig(out=str(tmp_path / "run"), data=str(data), epochs=2, **TINY))
    assert result.card["steps"] == 2 * 6 // TINY["batch"]
    assert result.card["recipe"] == {"data": str(data)}


@pytest.mark.parametrize("source", ["synthetic", "pairs"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, source):
    data = str(_pairs(tmp_path / "pairs")) if source == "pairs" else None
    batches = train_data.PairBatches if data else train_data.SyntheticBatches
    options = dict(TINY, data=data) | ({"ema_decay": 0.9} if data else {"echo": 3, "synth_size": 36})
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(TrainConfig(out=str(whole), steps=8, **options))

    real_batch_at = batches.batch_at

    def crash_at_step_6(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return real_batch_at(self, step)

    monkeypatch.setattr(batches, "batch_at", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(broken), steps=8, **options))
    assert torch.load(broken / "last.ckpt", weights_only=True)["step"] == 4
    monkeypatch.setattr(batches, "batch_at", real_batch_at)
    train(TrainConfig(out=str(broken), steps=8, resume=True, **options))

    a, b = load_file(whole / "final.safetensors"), load_file(broken / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _losses(whole) == _losses(broken)


def test_weight_average_is_exported_and_leaves_training_alone(tmp_path):
    plain, averaged = tmp_path / "plain", tmp_path / "averaged"
    train(TrainConfig(out=str(plain), steps=6, lr=3e-3, **TINY))
    result = train(TrainConfig(out=str(averaged), steps=6, lr=3e-3, ema_decay=0.9, **TINY))
    live = torch.load(averaged / "last.ckpt", weights_only=True)
    exported, trained = load_file(averaged / "final.safetensors"), load_file(plain / "final.safetensors")
    # The live weights follow the same path as without averaging; the export is the average.
    assert all(torch.equal(live["model"][k], trained[k]) for k in trained)
    assert all(torch.equal(live["ema"][k], exported[k]) for k in exported)
    assert any(not torch.equal(exported[k], trained[k]) for k in trained if exported[k].is_floating_point())
    assert result.card["train"]["ema_decay"] == 0.9
    with pytest.raises(HdmeError, match="ema_decay"):
        train(TrainConfig(out=str(tmp_path / "bad"), steps=1, ema_decay=1.0, **TINY))


def test_mixed_precision_on_the_cpu_trains_in_bf16_and_exports_fp32(tmp_path, capsys):
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    train(TrainConfig(out=str(plain), steps=12, lr=3e-3, **TINY))
    assert "² px, fp32" in capsys.readouterr().out
    result = train(TrainConfig(out=str(mixed), steps=12, lr=3e-3, amp=True, **TINY))
    assert "² px, bfloat16 autocast" in capsys.readouterr().out
    weights, reference = load_file(mixed / "final.safetensors"), load_file(plain / "final.safetensors")
    assert all(w.dtype == reference[k].dtype and torch.isfinite(w).all() for k, w in weights.items())
    # the same run in another arithmetic: close to the fp32 one, not identical to it
    assert any(not torch.equal(weights[k], reference[k]) for k in weights if weights[k].is_floating_point())
    losses, reference_losses = _losses(mixed), _losses(plain)
    assert abs(sum(losses) - sum(reference_losses)) < 0.1 * sum(reference_losses)
    assert result.card["train"]["amp"] is True


def test_time_budget_stops_cleanly(tmp_path):
    run = tmp_path / "run"
    result = train(TrainConfig(out=str(run), steps=80000, max_minutes=0.0, **TINY))
    assert result.card["steps"] == 1
    assert torch.load(run / "last.ckpt", weights_only=True)["step"] == 1


def test_a_killed_run_resumes_from_a_checkpoint_taken_on_wall_time(tmp_path, monkeypatch):
    real_batch_at = train_data.SyntheticBatches.batch_at

    def killed_at_step_6(self, step):
        if step == 6:
            raise KeyboardInterrupt
        return real_batch_at(self, step)

    monkeypatch.setattr(train_data.SyntheticBatches, "batch_at", killed_at_step_6)
    # Far fewer steps than the step interval: only the wall-time interval (here under a step) checkpoints.
    options = TINY | dict(steps=200, ckpt_every=500, val_every=500, ckpt_minutes=1e-6)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "run"), **options))
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["step"] == 6
    with pytest.raises(HdmeError, match="ckpt_minutes"):
        train(TrainConfig(out=str(tmp_path / "bad"), steps=1, ckpt_minutes=0, **TINY))


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_a_step_with_a_checkpoint_to_resume(tmp_path, signal_name):
    import signal
    import subprocess
    import sys

    run, config = tmp_path / "run", tmp_path / "config.json"
    config.write_text(json.dumps({"train": {"log_every": 1, "val_count": 2}}))
    args = ["train", "--config", str(config), "--model", "hdme-tiny", "--recipe", "paper", "--steps", "100000",
            "--size", "32", "--batch", "2", "--workers", "1", "--val-every", "100000", "--ckpt-every", "100000",
            "--out", str(run)]
    code = f"import sys; sys.argv = ['hdme', *{args!r}]; from hdme.cli import main; main()"
    # its own process group, signalled as a terminal's Ctrl-C is: the drawing worker gets it too
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        head = []
        for line in proc.stdout:
            head.append(line)
            if line.startswith("step 5/"):
                break
        assert proc.poll() is None, "".join(head)
        os.killpg(proc.pid, getattr(signal, signal_name))
        rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    lines = rest.strip().splitlines()
    assert "Traceback" not in rest
    stopped = int(lines[-2].split()[3])
    assert lines[-2] == f"stopped at step {stopped} of 100000; {run / 'last.ckpt'} holds the run"
    assert lines[-1] == f"continue with: hdme train --out {run} --resume"
    assert torch.load(run / "last.ckpt", weights_only=True)["step"] == stopped
    assert not (run / "final.safetensors").exists()  # an unfinished run exports nothing as final
    from typer.testing import CliRunner

    from hdme.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", str(stopped + 2)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "final.json").read_text())["steps"] == stopped + 2


def test_fit_minutes_ends_the_schedule_on_time(tmp_path, monkeypatch):
    from hdme.train.trainer import Trainer

    # A clock of 0.5 s per step: 0.2 min fits about 24 steps, whatever this machine's speed.
    monkeypatch.setattr(Trainer, "wall", lambda self: 0.5 * self.step)
    run = tmp_path / "run"
    result = train(TrainConfig(out=str(run), steps=1000, fit_minutes=0.2, lr=1e-3, schedule="cosine", **TINY))
    assert 20 <= result.card["steps"] <= 24
    with open(run / "metrics.csv", newline="") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh) if r["lr"]]
    assert lrs[-1] < 0.03 * 1e-3 < lrs[len(lrs) // 2]  # annealed at the end, not before
    capped = train(TrainConfig(out=str(tmp_path / "capped"), steps=6, fit_minutes=60.0, **TINY))
    assert capped.card["steps"] == 6
    with pytest.raises(HdmeError, match="fit_minutes"):
        train(TrainConfig(out=str(tmp_path / "bad"), steps=6, fit_minutes=0.0, **TINY))


def test_init_and_bad_options(tmp_path):
    first = train(TrainConfig(out=str(tmp_path / "a"), steps=2, **TINY))
    second = train(TrainConfig(out=str(tmp_path / "b"), steps=1, lr=0.0, init=str(tmp_path / "a" / "final.safetensors"), **TINY))
    for key, value in first.model.state_dict().items():
        if key.endswith("weight") and value.dim() == 4:
            assert torch.equal(value, second.model.state_dict()[key])
    with pytest.raises(HdmeError, match="loss must be one of"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, loss="nope", **{k: v for k, v in TINY.items()}))
    with pytest.raises(HdmeError, match="epochs need a dataset folder"):
        train(TrainConfig(out=str(tmp_path / "c"), epochs=1, **TINY))
    with pytest.raises(HdmeError, match="no checkpoint"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, resume=True, **TINY))
    with pytest.raises(HdmeError, match="away from the training mix"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, **{**TINY, "recipe": "away-leaves"}))
    # a wrong name lists the recipes training takes, not the evaluation sets it refuses
    with pytest.raises(HdmeError, match=re.escape(f"nope: neither a recipe name ({', '.join(RECIPES)}) nor")):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, **{**TINY, "recipe": "nope"}))
    away_file = tmp_path / "away.json"
    away_file.write_text(json.dumps({"data": {"kind": "away", "scene": "leaves"}}))
    with pytest.raises(HdmeError, match="away from the training mix"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, **{**TINY, "recipe": str(away_file)}))
    with pytest.raises(HdmeError, match="val_count must be positive"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, **{**TINY, "val_count": 0}))
    # a config file's render side with a larger crop flag: one line, before anything is drawn
    with pytest.raises(HdmeError, match="synth_size 40 is smaller than the crop size 64"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, **{**TINY, "size": 64, "synth_size": 40}))
    with pytest.raises(HdmeError, match="echo and pool"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=1, **{**TINY, "echo": 0}))


def _ddp_worker(rank, world, port, out, weights_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = train(TrainConfig(out=out, steps=4, **TINY))
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, os.path.join(weights_dir, f"rank{rank}.safetensors"))


def test_two_process_gloo_ddp_ranks_agree(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, port, str(run), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    for key in r0:
        if "running" not in key and "num_batches" not in key:  # BN statistics stay per rank
            assert torch.equal(r0[key], r1[key]), key
    card = json.loads((run / "final.json").read_text())
    assert card["hardware"]["processes"] == 2 and card["steps"] == 4
    assert card["train"]["batch"] == 2


def test_cli_merges_config_file_and_flags(tmp_path):
    from typer.testing import CliRunner

    from hdme.cli import app

    cfg = tmp_path / "cfg.json"
    options = {k: v for k, v in TINY.items() if k != "log_every"} | {"steps": 5, "lr": 0.002}
    cfg.write_text(json.dumps({"train": options}))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(run), "--steps", "2", "--loss", "l1"])
    assert result.exit_code == 0, result.output
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["steps"] == 2 and resolved["lr"] == 0.002 and resolved["loss"] == "l1"
    assert resolved["model"] == "hdme-tiny" and resolved["total_steps"] == 2

    result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", "3"])
    assert result.exit_code == 0, result.output
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["model"] == "hdme-tiny" and resolved["lr"] == 0.002 and resolved["total_steps"] == 3
    assert resolved["resume"] is True
    assert json.loads((run / "final.json").read_text())["steps"] == 3

    cfg.write_text(json.dumps({"trian": {}}))
    result = CliRunner().invoke(app, ["train", "--config", str(cfg), "--out", str(run), "--steps", "2"])
    assert isinstance(result.exception, HdmeError)


def test_synthetic_batches_keep_at_most_pool_batches_in_memory():
    from hdme.train.data import SyntheticBatches
    from hdme.train.synth import get_recipe

    for echo, synth_size in ((1, None), (2, 40)):
        batches = SyntheticBatches(get_recipe("paper"), 32, 2, seed=0, echo=echo, synth_size=synth_size, pool=3)
        for step in range(12):
            batches.batch_at(step)
        assert len(batches._chunks) <= 3


def test_synthetic_batches_rendered_ahead_by_workers_are_the_same_batches(monkeypatch):
    from hdme.train import data
    from hdme.train.synth import get_recipe

    loaders = []
    monkeypatch.setattr(data, "DataLoader", lambda *a, **k: loaders.append(1) or DataLoader(*a, **k))

    def batches(workers, steps):
        # one sample a step from the last 4 chunks: most steps skip the newest chunk, later ones take it
        stream = data.SyntheticBatches(get_recipe("hdme"), 24, 1, seed=5, echo=1, synth_size=28, pool=4, workers=workers)
        return [stream.batch_at(step) for step in steps]

    inline = batches(0, range(10))
    assert not loaders
    # steps 7… as a resumed run asks for them: the workers start again at the oldest chunk in the pool
    for ahead in (batches(2, range(10)), [None] * 7 + batches(2, range(7, 10))):
        for got, want in zip(ahead, inline):
            if got is not None:
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert len(loaders) == 2  # one per stream: skipped chunks are kept, not rendered again


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "train" / "configs").glob("*.json")), ids=lambda p: p.name)
def test_committed_configs_are_valid_runs(path):
    from hdme.train.cli import read_train_config
    from hdme.train.models import create_model
    from hdme.train.synth import get_recipe

    section = read_train_config(path)
    # The recipe files (hdme.json, paper.json) leave the budget to the command line.
    config = TrainConfig.from_dict({"steps": 1} | section | {"out": "unused"})
    config.check()
    get_recipe(config.recipe)
    create_model(config.model, **config.model_overrides)


def test_binned_l1_weighs_every_sigma_bin_the_same():
    from hdme.train.trainer import binned_l1_loss

    # 990 pixels at 0.5 px read 0.1 px off, 10 pixels at 8 px read 2 px low (σ/10 units)
    target = torch.cat([torch.full((990,), 0.05), torch.full((10,), 0.8)])
    pred = torch.cat([torch.full((990,), 0.06), torch.full((10,), 0.6)])
    plain = torch.nn.functional.l1_loss(pred, target)
    binned = binned_l1_loss(pred, target)
    assert abs(float(plain) - (990 * 0.01 + 10 * 0.2) / 1000) < 1e-6
    assert abs(float(binned) - (0.01 + 0.2) / 2) < 1e-6  # two bins present, each counted once
    pred.requires_grad_(True)
    binned_l1_loss(pred, target).backward()
    # a pixel of the rare bin pulls 99× harder than one of the common bin
    assert abs(float(pred.grad[-1].abs() / pred.grad[0].abs()) - 99.0) < 1e-3


def test_log_l1_keeps_the_median_and_weighs_small_sigma_more():
    from hdme.train.trainer import log_l1_loss

    # the best constant for truths 1, 2 and 9 px is their median under L1 and under log_l1 alike
    target = torch.tensor([0.1, 0.2, 0.9])
    candidates = torch.linspace(0, 1, 1001)
    best = candidates[int(torch.argmin(torch.stack([log_l1_loss(c.expand(3), target) for c in candidates])))]
    assert abs(float(best) - 0.2) < 1e-6
    # reading 1.1 px for 1 pulls (1 + 10.1) / (1 + 1.1) ≈ 5.3× harder than 10.1 for 10; below 0 it stays finite
    pred = torch.tensor([0.11, 1.01, -0.2], requires_grad=True)
    log_l1_loss(pred, torch.tensor([0.1, 1.0, 0.0])).backward()
    assert abs(float(pred.grad[0] / pred.grad[1]) - 11.1 / 2.1) < 0.01
    assert torch.isfinite(pred.grad).all() and float(pred.grad[2]) < 0


def test_train_help_shows_the_defaults_a_config_or_flag_replaces():
    from typer.testing import CliRunner

    from hdme.cli import app
    from hdme.train.config import TrainConfig

    text = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output.split())
    defaults = TrainConfig()
    for flag, value in (("--lr", defaults.lr), ("--batch", defaults.batch), ("--ckpt-minutes", defaults.ckpt_minutes),
                        ("--loss", defaults.loss), ("--seed", defaults.seed)):
        after = text.split(flag, 1)[1].split("--", 1)[0]
        assert f"[default: ({value})]" in after, (flag, after)
