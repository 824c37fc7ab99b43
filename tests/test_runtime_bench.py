"""hdme bench latency: statistics, JSON/Markdown/plot outputs, streaming comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.errors import HdmeError
from hdme.runtime.bench import bench_latency
from hdme.runtime.stats import STAT_KEYS, is_unstable, latency_stats
from runtime_support import tiny_onnx


def test_latency_stats_by_hand():
    s = latency_stats([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s["mean"] == pytest.approx(4.0) and s["median"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(np.sqrt((9 + 4 + 1 + 0 + 36) / 4))
    assert s["cv"] == pytest.approx(s["std"] / 4.0)
    assert s["p90"] == pytest.approx(4.0 + 0.6 * 6.0)  # linear interpolation between 4 and 10
    assert (s["min"], s["max"]) == (1.0, 10.0)
    assert is_unstable(s) and not is_unstable(latency_stats([10.0, 10.1, 9.9]))


def test_bench_latency_cli_writes_json_markdown_and_plot(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    out = {k: tmp_path / f"lat.{k}" for k in ("json", "md", "png")}
    result = CliRunner().invoke(app, [
        "bench", "latency", "--model", str(model), "--backend", "onnxruntime", "--size", "32x48", "--size", "64x64", "--batch", "1", "--batch", "2",
        "--warmup", "1", "--iters", "4", "--stream", "--json", str(out["json"]), "--markdown", str(out["md"]),
        "--plot", str(out["png"]),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(out["json"].read_text())
    rows = data["rows"]
    inference = [r for r in rows if r["mode"] == "inference"]
    stream = [r for r in rows if r["mode"] == "stream"]
    assert [(r["size"], r["batch"]) for r in inference] == [("32x48", 1), ("32x48", 2), ("64x64", 1), ("64x64", 2)]
    for row in inference:
        assert row["backend"] == "onnxruntime" and row["precision"] == "fp32" and row["iters"] == 4
        assert {"preprocess", "compute", "postprocess", "end-to-end"} <= set(row["stages"])
        e2e = row["stages"]["end-to-end"]
        assert set(STAT_KEYS) <= set(e2e)
        assert e2e["min"] <= e2e["median"] <= e2e["p90"] <= e2e["p95"] <= e2e["p99"] <= e2e["max"]
        assert row["fps"] == pytest.approx(row["batch"] * 1000 / e2e["mean"])
        assert e2e["mean"] >= row["stages"]["compute"]["mean"]
    assert len(stream) == 2 and all(r["fps"] > 0 and r["stream_ratio"] > 0 for r in stream)
    assert data["meta"]["cpu_count"] >= 1 and "onnxruntime" in data["meta"]
    md = out["md"].read_text()
    assert md.count("| inference | onnxruntime") == 4 and "| stream |" in md
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_latency_duration_and_unrunnable_configs(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    table = bench_latency(models=[str(model)], sizes=[(32, 32)], warmup=0, duration=0.05)
    assert table.rows[0]["iters"] >= 3
    with pytest.raises(HdmeError, match="nothing could be benchmarked"):
        bench_latency(models=[str(model)], precisions=["int8"], sizes=[(32, 32)], iters=1)


def test_in_turn_times_every_configuration_the_same_number_of_rounds(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    other = tiny_onnx(tmp_path / "other.onnx", seed=1)
    table = bench_latency(models=[str(model), str(other)], backends=["onnxruntime"],
                          precisions=["fp32", "int8"], sizes=[(32, 32), (16, 24)], warmup=1, iters=3, in_turn=True)
    assert [(r["model"], r["size"], r["iters"]) for r in table.rows] == [
        ("tiny.onnx", "32x32", 3), ("other.onnx", "32x32", 3), ("tiny.onnx", "16x24", 3), ("other.onnx", "16x24", 3)]
    # An fp32 file asked for at int8 cannot run: one note per file, and the rest is still timed.
    skipped = [n for n in table.notes if n.startswith("skipped")]
    assert len(skipped) == 2 and all(n.startswith("skipped onnxruntime int8") for n in skipped)


def test_a_model_argument_that_names_no_model_stops_the_benchmark_before_any_timing(tmp_path):
    model = tiny_onnx(tmp_path / "tiny.onnx")
    picture = tmp_path / "gray.png"
    picture.write_bytes(b"not a model")
    for bad, message in ((picture, "gray.png: not a model file"), (tmp_path / "missing.onnx", "missing.onnx: no such model file"),
                         ("no-such-model", "no shipped model named 'no-such-model'")):
        with pytest.raises(HdmeError, match=message):
            bench_latency(models=[str(model), str(bad)], sizes=[(32, 32)], iters=1)
