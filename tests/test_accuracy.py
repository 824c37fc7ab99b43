"""Accuracy benchmark: protocols checked with stand-in predictors whose scores are known by hand."""

import hashlib
import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.conventions import save_sigma_map
from hdme.datasets import load_dataset, shared_data_dir
from hdme.errors import HdmeError
from hdme.evaluation import load_eval_set
from hdme.runtime.accuracy import (
    DMENET_RTF_MAE,
    Method,
    accuracy_rows,
    decode_sigma_thumb,
    methods_for,
    render_markdown,
    run_accuracy,
    table_columns,
)


def _key(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


class TruthPredictor:
    """Returns the truth of each known image: σ maps as they are, masks as 0 px in focus / 5 px out."""

    def __init__(self, samples):
        self.truth = {}
        for s in samples:
            self.truth[_key(s.image)] = s.sigma if s.sigma is not None else np.where(s.in_focus, 0.0, 5.0).astype(np.float32)

    def predict(self, rgb):
        return self.truth[_key(rgb)]


class ConstantPredictor:
    def __init__(self, value):
        self.value = value

    def predict(self, rgb):
        return np.full(rgb.shape[:2], self.value, np.float32)


def stand_in(name, predictor) -> Method:
    return Method("hdme", name, "stand-in", "fp32", lambda: predictor)


@pytest.fixture
def map_dir(tmp_path):
    """Three 48×64 images with σ maps (16-bit PNG), the layout of `hdme data make`'s splits."""
    rng = np.random.default_rng(0)
    root = tmp_path / "maps"
    (root / "image").mkdir(parents=True)
    for i in range(3):
        img = rng.integers(0, 256, (48, 64, 3)).astype(np.uint8)
        sigma = np.full((48, 64), 0.25 + i, np.float32)
        sigma[:, 32:] = 4.0
        cv2.imwrite(str(root / "image" / f"s{i}.png"), img)
        save_sigma_map(root / "defocus" / f"s{i}.png", sigma)
    return root


@pytest.fixture
def mask_dir(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "masks"
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    for i in range(2):
        cv2.imwrite(str(root / "image" / f"m{i}.png"), rng.integers(0, 256, (40, 40, 3)).astype(np.uint8))
        mask = np.zeros((40, 40), np.uint8)
        mask[10 + i : 30, 5:25] = 255
        cv2.imwrite(str(root / "mask" / f"m{i}.png"), mask)
    return root


def test_truth_scores_perfectly_and_a_constant_as_computed_by_hand(map_dir, mask_dir):
    samples = load_dataset(str(map_dir)) + load_dataset(str(mask_dir))
    methods = [stand_in("truth", TruthPredictor(samples)), stand_in("constant", ConstantPredictor(2.0))]
    res = run_accuracy([str(map_dir), str(mask_dir)], methods, progress=False)
    truth, constant = res["runs"]
    assert truth["datasets"]["maps"]["mean"]["mae"] == 0.0
    assert truth["datasets"]["maps"]["mean"]["d1"] == 1.0
    assert truth["datasets"]["masks"]["mean"]["best_f"] == pytest.approx(1.0)
    assert truth["datasets"]["masks"]["mean"]["mae"] == 0.0
    # constant 2 px: left halves have σ 0.25, 1.25, 2.25, right halves 4 → per-image MAE on σ/10
    by_hand = [(abs(2 - (0.25 + i)) + 2.0) / 2 / 10 for i in range(3)]
    got = [e["mae"] for e in constant["datasets"]["maps"]["per_image"]]
    assert got == pytest.approx(by_hand, abs=1e-6)
    assert constant["datasets"]["maps"]["mean"]["mae"] == pytest.approx(np.mean(by_hand), abs=1e-6)
    # a constant map has no in-focus ranking: every threshold selects all pixels
    f_all = [1.3 * p / (0.3 * p + 1.0) for p in (400 / 1600, 380 / 1600)]
    assert constant["datasets"]["masks"]["mean"]["best_f"] == pytest.approx(np.mean(f_all), abs=1e-6)
    assert all(e["ms"] >= 0 for e in constant["datasets"]["maps"]["per_image"])


def test_one_table_and_figure_data(map_dir, mask_dir):
    samples = load_dataset(str(map_dir))
    res = run_accuracy([str(map_dir), str(mask_dir)], [stand_in("truth", TruthPredictor(samples + load_dataset(str(mask_dir))))], progress=False)
    cols = [k for k, _ in table_columns(res)]
    assert cols[:3] == ["label", "backend", "precision"]
    assert {"maps/mae", "maps/rmse", "maps/d3", "maps/ms", "masks/best_f", "masks/mae", "masks/ms"} <= set(cols)
    (row,) = accuracy_rows(res)
    assert row["maps/rmse"] == 0.0 and row["label"] == "truth · stand-in · fp32"
    md = render_markdown(res)
    assert "| method | backend | precision |" in md and "maps RMSE px" in md and "masks best F" in md
    # σ bins: the truth reads as itself in every bin with pixels; thumbnails decode to the truth
    bins = res["runs"][0]["datasets"]["maps"]["sigma_bins"]
    assert [b["bin"] for b in bins] == ["0-1", "1-3", "3-5", "5-7", "7-10"]
    assert sum(b["share"] for b in bins) == pytest.approx(1.0)
    assert all(b["mae"] == 0.0 and b["pred"] == b["true"] for b in bins if b["true"] is not None)
    assert "### maps, by true σ" in md and "masks, by true σ" not in md
    thumb = decode_sigma_thumb(res["runs"][0]["datasets"]["maps"]["maps"]["s1"])
    assert thumb.shape == (48, 64) and np.allclose(thumb[:, :30], 1.24, atol=0.04)
    json.dumps(res)  # serialisable as is


def test_missing_dataset_is_one_line_and_the_rest_runs(map_dir, tmp_path):
    lines = []
    res = run_accuracy([str(tmp_path / "nowhere"), str(map_dir)], [stand_in("c", ConstantPredictor(1.0))], report=lines.append, progress=False)
    assert len(lines) == 1 and "nowhere" in lines[0] and "\n" not in lines[0]
    assert list(res["datasets"]) == ["maps"] and res["runs"][0]["datasets"]["maps"]["mean"]["mae"] > 0


def test_folders_of_one_name_get_a_column_each(map_dir, tmp_path):
    import shutil

    other = tmp_path / "elsewhere" / "maps"
    shutil.copytree(map_dir, other)
    for path in (other / "defocus").iterdir():  # different truth, so the two columns differ
        save_sigma_map(path, np.full((48, 64), 2.0, np.float32))
    lines = []
    res = run_accuracy([str(map_dir), str(other), str(other)], [stand_in("c", ConstantPredictor(1.0))], report=lines.append, progress=False)
    assert list(res["datasets"]) == ["maps", str(other)]
    maes = [res["runs"][0]["datasets"][name]["mean"]["mae"] for name in res["datasets"]]
    assert maes[1] == pytest.approx(0.1) and maes[0] != maes[1]
    assert len(lines) == 1 and "given twice" in lines[0]


def test_a_changed_synthetic_set_is_named_by_its_spec():
    lines = []
    res = run_accuracy(["synthetic:2,size=64,seed=5", "synthetic:2,size=64"], [stand_in("c", ConstantPredictor(1.0))],
                       report=lines.append, progress=False)
    assert list(res["datasets"]) == ["synthetic:2,size=64,seed=5", "synthetic:2,size=64"] and not lines
    assert load_eval_set("synthetic:2").name == "synthetic:2"  # a count is a set of its own too


def test_a_model_that_cannot_load_is_one_line(map_dir):
    def fail():
        raise HdmeError("no such model")

    lines = []
    res = run_accuracy([str(map_dir)], [Method("hdme", "x.onnx", "auto", "fp32", fail), stand_in("c", ConstantPredictor(1.0))], report=lines.append, progress=False)
    assert len(lines) == 1 and "no such model" in lines[0]
    assert [r["label"] for r in res["runs"]] == ["c · stand-in · fp32"]


def test_method_rows():
    rows = methods_for(["a.onnx", "a.int8.onnx"], ["onnxruntime", "torch"], ["hdme", "zhuo-sim"])
    assert [(m.method, m.model, m.backend, m.precision) for m in rows] == [
        # a file's precision is its own until its engine says which (not "fp32" for an INT8 file)
        ("hdme", "a.onnx", "onnxruntime", "own"), ("hdme", "a.onnx", "torch", "own"),
        ("hdme", "a.int8.onnx", "onnxruntime", "own"), ("hdme", "a.int8.onnx", "torch", "own"),
        ("zhuo-sim", None, "numpy/opencv", "fp32"),
    ]
    assert {m.tta for m in rows if m.method == "hdme"} == {"flip"}  # as hdme predict
    rows = methods_for(["a.onnx"], ["onnxruntime"], ["hdme"], ttas=["none", "flip4"])
    assert [(m.tta, m.label) for m in rows] == [("none", "a.onnx · onnxruntime · own"),
                                                ("flip4", "a.onnx · onnxruntime · own · flip4")]
    with pytest.raises(HdmeError):
        methods_for([], [], ["dmenet"])
    with pytest.raises(HdmeError, match="unknown test-time augmentation"):
        methods_for([], [], ["hdme"], ttas=["rotate"])


def test_data_make_root_reads_its_test_split(map_dir, tmp_path):
    root = tmp_path / "made"
    (root / "test").mkdir(parents=True)
    (root / "manifest.json").write_text("{}")
    for sub in ("image", "defocus"):
        (map_dir / sub).rename(root / "test" / sub)
    ds = load_eval_set(f"{root}:2")
    assert ds.protocol == "map" and len(ds.samples) == 2 and "test split" in ds.note


def test_cli_zhuo_sim_on_a_folder(map_dir, tmp_path):
    from hdme.cli import app

    out_json, out_md = tmp_path / "acc.json", tmp_path / "acc.md"
    result = CliRunner().invoke(app, ["bench", "accuracy", "--dataset", str(map_dir), "--method", "zhuo-sim", "--json", str(out_json), "--markdown", str(out_md)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out_json.read_text())
    assert doc["runs"][0]["method"] == "zhuo-sim" and len(doc["runs"][0]["datasets"]["maps"]["per_image"]) == 3
    assert "Zhuo–Sim" in out_md.read_text()


def test_synthetic_set_is_fixed_by_its_seed():
    pytest.importorskip("torch")
    synth = pytest.importorskip("hdme.train.synth")
    if not hasattr(synth, "SyntheticStream"):
        pytest.skip("hdme.train.synth has no SyntheticStream yet")
    a, b = load_eval_set("synthetic:2"), load_eval_set("synthetic:2")
    assert len(a.samples) == 2 and a.protocol == "map"
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.sigma, y.sigma) for x, y in zip(a.samples, b.samples))


@pytest.mark.skipif(shared_data_dir() is None, reason="no ../shared/data (real benchmarks) on this machine")
def test_real_datasets_with_truth_and_zhuo_sim():
    specs = [s for s in ("rtf", "cuhk:2", "dut:2") if _present(s)]
    if not specs:
        pytest.skip("none of rtf, cuhk, dut under ../shared/data")
    samples = [s for spec in specs for s in load_eval_set(spec).samples]
    res = run_accuracy(specs, [stand_in("truth", TruthPredictor(samples)), methods_for([], [], ["zhuo-sim"])[0]], progress=False)
    truth, classic = res["runs"]
    for name, info in res["datasets"].items():
        key = "best_f" if info["protocol"] == "mask" else "mae"
        assert truth["datasets"][name]["mean"][key] == pytest.approx(1.0 if key == "best_f" else 0.0, abs=1e-9)
    if "rtf" in res["datasets"]:
        per_image = classic["datasets"]["rtf"]["per_image"]
        assert all(e["dmenet_mae"] == DMENET_RTF_MAE[e["name"]] for e in per_image)
        # measured 0.097–0.138 per image (mean 0.120); a map of zeros scores 0.31
        assert classic["datasets"]["rtf"]["mean"]["mae"] < 0.16
        assert accuracy_rows(res)[-1]["label"] == "DMENet (published)"


def _present(spec: str) -> bool:
    try:
        load_dataset(spec.split(":")[0], limit=1)
        return True
    except HdmeError:
        return False


def test_extended_range_rows_predict_as_hdme_predict_does():
    from hdme.runtime.predict import DefocusPredictor

    plain, extended = (methods_for([None], ["onnxruntime"], ["hdme"], ttas=["none"], extend_range=e)[0] for e in (False, True))
    assert not plain.extend_range and extended.label == "default · onnxruntime · own · extended range"
    board = ((np.indices((128, 128)).sum(axis=0) // 16) % 2 * 200 + 25).astype(np.uint8)
    image = np.repeat(cv2.GaussianBlur(board, (0, 0), 12.0)[..., None], 3, axis=2)
    want = DefocusPredictor(None, backend="onnxruntime", tta="none", extend_range=True).predict(image)
    np.testing.assert_array_equal(extended.build().predict(image), want)
