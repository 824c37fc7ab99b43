"""The evaluation harness: one set and one engine give the same numbers in training validation, the
quantisation accuracy check and `hdme bench accuracy`; σ bins; set specs."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from export_support import SIZE, tiny_export  # noqa: F401 (fixture)
from hdme.cli import app
from hdme.errors import HdmeError
from hdme.evaluation import SYNTHETIC_SETS, load_eval_set, parse_synthetic
from hdme.metrics import SigmaBins

torch = pytest.importorskip("torch")

SPEC = f"synthetic:3,size={SIZE},seed=5"


def _bench(tmp_path, model: str, backend: str) -> dict:
    out = tmp_path / f"{backend}.json"
    result = CliRunner().invoke(app, ["bench", "accuracy", "--dataset", SPEC, "--model", model, "--backend", backend,
                                      "--method", "hdme", "--tta", "none", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["runs"][0]["datasets"][SPEC]


def test_training_quantisation_and_bench_agree_exactly(tiny_export, tmp_path):
    from hdme.export.evaluate import accuracy_table, heldout_set
    from hdme.train.data import evaluate
    from hdme.train.models import save_model

    _, onnx_result, model = tiny_export
    weights = save_model(model, tmp_path / "tiny.safetensors")
    eval_set = load_eval_set(SPEC)

    validation = evaluate(model, eval_set, torch.device("cpu"))
    bench_torch = _bench(tmp_path, str(weights), "torch")
    assert bench_torch["mean"] == validation["mean"]
    assert bench_torch["sigma_bins"] == validation["sigma_bins"]
    assert validation["mean"]["mae"] > 0 and any(b["pred"] for b in validation["sigma_bins"] if b["pred"] is not None)

    onnx_path = onnx_result.path
    (row,) = accuracy_table(onnx_path, {}, heldout_set(SPEC))
    bench_onnx = _bench(tmp_path, str(onnx_path), "onnxruntime")
    assert row["mae"] == bench_onnx["mean"]["mae"] and row["d1"] == bench_onnx["mean"]["d1"]
    assert row["sigma_bins"] == bench_onnx["sigma_bins"]
    # torch and ONNX Runtime run the same network: close, though not bit for bit
    assert row["mae"] == pytest.approx(validation["mean"]["mae"], abs=1e-5)


def test_sigma_bins_by_hand():
    bins = SigmaBins()
    truth = np.array([[0.5, 2.0, 4.0, 6.0], [8.0, 10.0, 12.0, 0.0]])
    bins.add(truth + np.array([[1.0, -1.0, 0.0, 0.0], [-2.0, 0.0, -4.0, 0.0]]), truth)
    rows = {r["bin"]: r for r in bins.rows()}
    assert list(rows) == ["0-1", "1-3", "3-5", "5-7", "7-10", ">10"]
    assert rows["0-1"]["share"] == 2 / 8 and rows["0-1"]["true"] == 0.25 and rows["0-1"]["pred"] == 0.75
    assert rows["0-1"]["mae"] == pytest.approx(0.5 / 10)
    assert rows["7-10"]["true"] == 9.0 and rows["7-10"]["pred"] == 8.0  # 10 px belongs to 7–10
    assert rows[">10"]["pred"] == 8.0 and rows[">10"]["error_share"] == pytest.approx(4 / 8)
    assert sum(r["error_share"] for r in rows.values()) == pytest.approx(1.0)
    below = SigmaBins()
    below.add(np.ones((2, 2)), np.ones((2, 2)))
    assert [r["bin"] for r in below.rows()] == ["0-1", "1-3", "3-5", "5-7", "7-10"]  # no empty >10 row


def test_specs_name_their_sets():
    assert parse_synthetic("rtf") is None and parse_synthetic("some/folder:3") is None
    leaves = parse_synthetic("away-leaves:8,size=128")
    assert (leaves.recipe, leaves.count, leaves.size, leaves.seed) == ("away-leaves", 8, 128, SYNTHETIC_SETS["away-leaves"].seed)
    assert leaves.spec == "away-leaves:8,size=128" and parse_synthetic(leaves.spec) == leaves
    assert parse_synthetic("synthetic").count == 100
    for bad in ("synthetic:4,colour=red", "synthetic:4,size=big", "synthetic:4,size=8"):
        with pytest.raises(HdmeError):
            parse_synthetic(bad)
    with pytest.raises(HdmeError, match="the count after ':' must be a whole number"):
        load_eval_set("away-leaves:abc")
    with pytest.raises(HdmeError, match="not one of rtf, cuhk, dut, synthetic, away-leaves, away-dof, away-large and not a folder"):
        load_eval_set("leaves")


def test_skipped_specs_print_as_given(tmp_path):
    # rich would print ':abc:' of a spec as an emoji
    result = CliRunner().invoke(app, ["bench", "accuracy", "--dataset", "away-leaves:abc:", "--method", "zhuo-sim"])
    assert isinstance(result.exception, HdmeError)
    assert "skipping dataset away-leaves:abc:" in result.output


def test_equalised_depth_makes_thin_lens_sigma_even():
    from hdme.train.synth.away import thin_lens_even

    rng = np.random.default_rng(0)
    inv_depth = np.concatenate([np.full(3000, 0.2), rng.random(7000) ** 3]).reshape(100, 100)  # a big flat leaf, skewed depths
    for seed in range(3):  # focus far, middle or near
        sigma = thin_lens_even(inv_depth, np.random.default_rng(seed), 10.0)
        assert sigma.min() < 0.2 and sigma.max() > 9.8
        flat = sigma[inv_depth == 0.2]
        assert np.ptp(flat) == 0.0  # one depth, one σ
    sigma = thin_lens_even(inv_depth[30:], np.random.default_rng(1), 10.0)  # without the leaf: evenly spread
    assert np.allclose(np.percentile(sigma, [25, 50, 75]), [2.5, 5.0, 7.5], atol=0.1)


def test_dead_leaves_lie_on_a_smooth_depth():
    """Neighbouring leaves sit at similar depths: σ jumps by more than 3 px at under 3 % of the pixels
    (7 % with a depth per leaf drawn at random, as the set was first made)."""
    from hdme.train.synth.away import draw_leaves, thin_lens_even
    from hdme.train.synth.sources import as_source

    rng = np.random.default_rng(3)
    _, inv_depth = draw_leaves(128, rng, as_source(None))
    sigma = thin_lens_even(inv_depth, rng, 10.0)
    jumps = np.abs(np.diff(sigma, axis=1))
    assert np.mean(jumps > 1.0) < 0.08 and np.mean(jumps > 3.0) < 0.03


@pytest.mark.parametrize("name", ["away-leaves", "away-dof", "away-large"])
def test_away_sets_span_their_range_and_are_fixed_by_their_seed(name):
    spec = f"{name}:2,size=64"
    a, b = load_eval_set(spec), load_eval_set(spec)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.sigma, y.sigma) for x, y in zip(a.samples, b.samples))
    top = 30.0 if name == "away-large" else 10.0
    for sample in a.samples:
        assert sample.image.dtype == np.uint8 and sample.image.shape == (64, 64, 3)
        assert sample.sigma.min() < 0.2 * top and 0.8 * top < sample.sigma.max() <= top + 1e-4
