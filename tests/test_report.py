"""Benchmark report: Markdown and figures from accuracy and latency results."""

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.conventions import save_sigma_map
from hdme.datasets import shared_data_dir
from hdme.errors import HdmeError
from hdme.io import write_json
from hdme.runtime.accuracy import Method, run_accuracy
from hdme.runtime.bench import ResultsTable
from hdme.runtime.classic import ZhuoSimPredictor
from hdme.runtime.report import build_report, load_results


class ConstantPredictor:
    def predict(self, rgb):
        return np.full(rgb.shape[:2], 1.5, np.float32)


@pytest.fixture
def accuracy_json(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    (root / "image").mkdir(parents=True)
    for i in range(2):
        img = cv2.GaussianBlur(rng.integers(0, 256, (48, 48, 3)).astype(np.uint8), (0, 0), 1.0 + i)
        cv2.imwrite(str(root / "image" / f"a{i}.png"), img)
        save_sigma_map(root / "defocus" / f"a{i}.npy", np.full((48, 48), 1.0 + i, np.float32))
    specs = [str(root)] + (["rtf:1"] if shared_data_dir() and (shared_data_dir() / "rtf").is_dir() else [])
    methods = [Method("zhuo-sim", None, "numpy/opencv", "fp32", ZhuoSimPredictor), Method("hdme", "const", "stand-in", "fp32", ConstantPredictor)]
    path = tmp_path / "acc.json"
    write_json(path, run_accuracy(specs, methods, progress=False))
    return path


@pytest.fixture
def latency_json(tmp_path):
    rows = [
        {"mode": "inference", "backend": "onnxruntime", "device": "cpu", "model": "m.onnx", "precision": p, "size": f"{h}x{w}",
         "height": h, "width": w, "batch": 1, "iters": 10, "fps": 1e3 / ms,
         "stages": {"end-to-end": {"mean": ms, "median": ms, "p90": ms * 1.1, "p95": ms * 1.2, "p99": ms * 1.3, "std": 0.1, "cv": 0.01}}}
        for p, scale in (("fp32", 1.0), ("int8", 0.6)) for h, w, ms in ((256, 256, 5.0 * scale), (480, 640, 20.0 * scale))
    ]
    path = tmp_path / "lat.json"
    ResultsTable("latency", [], rows=rows + [{"mode": "inference", "note": "a row without numbers"}], meta={"host": "test"}).write_json(path)
    return path


def test_report_renders_every_figure(accuracy_json, latency_json, tmp_path):
    out = tmp_path / "report"
    md_path = build_report([accuracy_json, latency_json], out)
    md = md_path.read_text()
    figures = ["sigma_bins.png", "grid_set.png", "latency_vs_resolution.png"]
    if "rtf" in json.loads(accuracy_json.read_text())["datasets"]:
        figures += ["rtf_profiles.png", "grid_rtf.png"]
    for name in figures:
        assert (out / name).stat().st_size > 5_000, name
        assert f"]({name})" in md
    assert "Zhuo–Sim (2011)" in md and "const · stand-in · fp32" in md
    assert "| onnxruntime |" in md  # the latency table


def test_two_accuracy_files_merge_with_distinct_labels(accuracy_json, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(accuracy_json.read_text())
    merged, latency, _ = load_results([accuracy_json, other])
    labels = [r["label"] for r in merged["runs"]]
    assert len(labels) == 4 and len(set(labels)) == 4 and not latency
    assert all(set(r["datasets"]) == set(merged["datasets"]) for r in merged["runs"])
    # the same dataset name over other images becomes a column of its own
    doc = json.loads(accuracy_json.read_text())
    doc["datasets"]["set"]["images"] = doc["datasets"]["set"]["images"][:1]
    other.write_text(json.dumps(doc))
    merged, _, _ = load_results([accuracy_json, other])
    assert "set (other)" in merged["datasets"] and "set (other)" in merged["runs"][-1]["datasets"]


def test_unusable_inputs_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"size": "1x1"}]}')
    with pytest.raises(HdmeError, match="neither accuracy results"):
        build_report([bad], tmp_path / "r")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(HdmeError, match="not a JSON file"):
        build_report([broken], tmp_path / "r")
    result = CliRunner().invoke(app, ["bench", "report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and isinstance(result.exception, HdmeError)
