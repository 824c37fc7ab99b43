import json

import numpy as np
import pytest
from export_support import SIZE, calib_dir, heldout, tiny_export  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from hdme.cli import app

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, numpy_helper  # noqa: E402

FP16_MAE_BOUND = 0.0005  # σ/10, increase over FP32
INT8_MAE_BOUND = 0.003


@pytest.fixture(scope="module")
def quantized(tiny_export, calib_dir):
    from hdme.export.calibration import CalibrationSet
    from hdme.export.quantize import convert_fp16, default_output, quantize_int8

    folder, result, _ = tiny_export
    calib = CalibrationSet(calib_dir, size=(SIZE, SIZE))
    paths = {
        "fp16": default_output(result.path, "fp16"),
        "int8": default_output(result.path, "int8", "tensorrt"),
        "int8-cpu": default_output(result.path, "int8", "cpu"),
    }
    # The bounds below were measured on these converters; with ModelOpt installed, 'auto' would take it.
    convert_fp16(result.path, paths["fp16"], backend="ort")
    quantize_int8(result.path, paths["int8"], calib, target="tensorrt", backend="ort")
    quantize_int8(result.path, paths["int8-cpu"], calib, target="cpu")
    return result.path, paths, calib


def test_default_names(quantized):
    fp32, paths, _ = quantized
    assert [p.name for p in paths.values()] == ["hdme-tiny.fp16.onnx", "hdme-tiny.int8.onnx", "hdme-tiny.int8-cpu.onnx"]


def test_accuracy_within_bounds(quantized, heldout):
    from hdme.export.evaluate import accuracy_table

    fp32, paths, _ = quantized
    rows = {r["model"]: r for r in accuracy_table(fp32, paths, heldout)}
    assert rows["fp32"]["mean_diff_px"] == 0.0
    assert rows["fp16"]["mae_increase"] <= FP16_MAE_BOUND
    assert 0.0 < rows["fp16"]["mean_diff_px"] < 0.01
    for name in ("int8", "int8-cpu"):
        assert rows[name]["mae_increase"] <= INT8_MAE_BOUND, rows[name]
        # INT8 changes the output, but within a fraction of a pixel on average.
        assert 0.0 < rows[name]["mean_diff_px"] < 0.5, rows[name]
    assert 0.0 <= rows["int8"]["d1"] <= 1.0


def _initializers(model):
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_tensorrt_int8_is_symmetric_signed_with_zero_points_0(quantized):
    _, paths, _ = quantized
    model = onnx.load(str(paths["int8"]))
    inits = _initializers(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 20
    per_channel = 0
    for node in qdq:
        assert len(node.input) == 3, f"{node.name} has no explicit zero point"
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8, f"{node.name}: {zero_point.dtype}"
        assert not zero_point.any(), f"{node.name}: zero point {zero_point}"
        per_channel += int(zero_point.size > 1)
    assert per_channel > 0  # per-channel weights
    # Every Conv weight arrives through a DequantizeLinear of an int8 tensor, except in the float head.
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        source = produced_by.get(conv.input[1])
        if conv.name.startswith(("/up.", "/out/")):
            assert source is None, f"head conv {conv.name} should stay float"
        else:
            assert source is not None and source.op_type == "DequantizeLinear", conv.name
            assert inits[source.input[0]].dtype == np.int8
    assert not any(init.data_type == TensorProto.INT32 and name.endswith("_quantized") for name, init in
                   ((i.name, i) for i in model.graph.initializer)), "biases must stay float for TensorRT"


def test_cpu_int8_has_unsigned_activations_and_signed_weights(quantized):
    _, paths, _ = quantized
    model = onnx.load(str(paths["int8-cpu"]))
    inits = _initializers(model)
    activation_zero_points = {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_zero_points == {np.dtype(np.uint8)}
    weights = {inits[n.input[0]].dtype for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert weights == {np.dtype(np.int8)}
    # On CPUs the head is quantised too (faster, within the accuracy bound).
    produced_by = {o: n for n in model.graph.node for o in n.output}
    out_conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/out/"))
    assert produced_by[out_conv.input[1]].op_type == "DequantizeLinear"


def test_tensorrt_refuses_the_cpu_int8_layout_before_building(quantized, tmp_path):
    from hdme.errors import HdmeError
    from hdme.export.onnx import set_metadata
    from hdme.export.tensorrt import build_engine, tensorrt_qdq_problem

    _, paths, _ = quantized
    trt_model = onnx.load(str(paths["int8"]))
    assert tensorrt_qdq_problem(trt_model) is None
    q = next(n for n in trt_model.graph.node if n.op_type == "QuantizeLinear")
    zero_point = next(i for i in trt_model.graph.initializer if i.name == q.input[2])
    zero_point.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(zero_point).shape, 3, np.int8), zero_point.name))
    assert "zero point other than 0" in tensorrt_qdq_problem(trt_model)
    cpu = onnx.load(str(paths["int8-cpu"]))
    assert "ONNX Runtime's CPU kernels" in tensorrt_qdq_problem(cpu)
    # Without hdme's metadata (a file from elsewhere) the Q/DQ layout itself tells.
    set_metadata(cpu, {"int8_target": ""})
    assert "quantises to UINT8" in tensorrt_qdq_problem(cpu)
    engine = tmp_path / "cpu.engine"
    with pytest.raises(HdmeError, match="TensorRT cannot build this INT8 graph"):
        build_engine(paths["int8-cpu"], engine)
    assert not engine.exists()


def test_calibration_methods_give_different_ranges(quantized, tmp_path):
    from hdme.export.quantize import calibration_method, quantize_int8

    fp32, paths, calib = quantized

    def scales(path):
        return {k: float(v) for k, v in _scales(path).items() if v.size == 1}

    quantize_int8(fp32, tmp_path / "max.onnx", calib, method="max", backend="ort")
    # Percentile shares the histogram path of entropy (which is too slow for a unit test); 'auto'
    # takes ONNX Runtime for it even where ModelOpt is installed.
    quantize_int8(fp32, tmp_path / "percentile.onnx", calib, method="percentile")
    by_max, by_percentile = scales(tmp_path / "max.onnx"), scales(tmp_path / "percentile.onnx")
    assert by_max.keys() == by_percentile.keys()
    # The histogram methods clip outliers: no range wider than max's, and some strictly narrower.
    assert all(by_percentile[k] <= by_max[k] * (1 + 1e-3) for k in by_max)
    assert any(by_percentile[k] < by_max[k] * 0.99 for k in by_max)
    # Unasked, TensorRT's symmetric layout is calibrated by percentile (the fixture's file), the CPU
    # layout by max, and ModelOpt, which has no percentile, by max.
    assert scales(paths["int8"]) == by_percentile
    assert [calibration_method(None, "cpu"), calibration_method(None, "tensorrt", "modelopt"),
            calibration_method("entropy", "tensorrt")] == ["max", "max", "entropy"]


def _scales(path):
    model = onnx.load(str(path))
    inits = _initializers(model)
    return {n.input[0]: inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_older_onnxruntime_calibrates_inside_quantize_static_to_the_same_ranges(quantized, tmp_path, monkeypatch):
    from hdme.errors import HdmeError
    from hdme.export import quantize as q

    fp32, paths, calib = quantized
    # As on onnxruntime before 1.27, where quantize_static takes no precomputed ranges.
    monkeypatch.setattr(q, "ort_takes_calibration_ranges", lambda: False)
    q.quantize_int8(fp32, tmp_path / "older.onnx", calib, target="tensorrt", backend="ort")
    older, newer = _scales(tmp_path / "older.onnx"), _scales(paths["int8"])
    assert older.keys() == newer.keys() and len(older) > 20
    for name in newer:
        np.testing.assert_allclose(older[name], newer[name], rtol=1e-6, err_msg=name)
    with pytest.raises(HdmeError, match="entropy calibration needs onnxruntime 1.27"):
        q.quantize_int8(fp32, tmp_path / "entropy.onnx", calib, method="entropy", backend="ort")
    assert not (tmp_path / "entropy.onnx").exists()


def test_exclusion_patterns_select_their_own_node_only_as_modelopt_matches_them(quantized):
    import re

    from hdme.export.quantize import exclusion_patterns, head_nodes

    fp32, _, _ = quantized
    # Node names of the graph and names that prefix each other or hold regex characters.
    extra = ["/Concat_3", "/Concat_30", "/up.0/Conv", "/up.0/Conv_1", "/up/Resize+x"]
    names = list(dict.fromkeys([n.name for n in onnx.load(str(fp32)).graph.node] + extra))
    # ModelOpt (quantize and AutoCast) keeps a node when re.match(pattern, node.name) holds.
    for name, pattern in zip(names, exclusion_patterns(names)):
        assert [n for n in names if re.match(pattern, n)] == [name], pattern
    head = head_nodes(onnx.load(str(fp32)))
    assert [n for n in names if any(re.match(p, n) for p in exclusion_patterns(head))] == [n for n in names if n in head]


def test_tensorrt_head_can_be_quantised_too(quantized, tmp_path):
    from hdme.export.quantize import head_nodes, quantize_int8

    fp32, _, calib = quantized
    head = head_nodes(onnx.load(str(fp32)))
    assert "/out/Conv" in head and any(n.startswith("/up.") for n in head)
    quantize_int8(fp32, tmp_path / "all.onnx", calib, target="tensorrt", keep_head=False)
    model = onnx.load(str(tmp_path / "all.onnx"))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    out_conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("/out/"))
    assert produced_by[out_conv.input[1]].op_type == "DequantizeLinear"


def test_cli_quantize_writes_model_and_accuracy_json(quantized, tmp_path):
    import cv2

    from hdme.conventions import save_sigma_map

    fp32, _, _ = quantized
    # A held-out folder (images + σ maps), as used where torch is absent.
    heldout_dir = tmp_path / "heldout"
    heldout_dir.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        cv2.imwrite(str(heldout_dir / f"s{i}.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        save_sigma_map(heldout_dir / f"s{i}.npy", rng.uniform(0, 5, (SIZE, SIZE)).astype(np.float32))
    out = tmp_path / "cli.fp16.onnx"
    result = CliRunner().invoke(app, ["export", "quantize", str(fp32), "--precision", "fp16", "--out", str(out),
                                      "--eval", str(heldout_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cli.fp16.json").read_text())
    assert report["precision"] == "fp16" and report["heldout"] == "heldout, 2 images"
    assert [r["model"] for r in report["rows"]] == ["fp32", "fp16"]
    assert report["rows"][1]["max_diff_px"] > 0.0
    again = CliRunner().invoke(app, ["export", "quantize", str(out), "--precision", "int8"])
    assert "already fp16" in str(again.exception)
    # the default calibration set is named as the source tree names it, not by this machine's path
    result = CliRunner().invoke(app, ["export", "quantize", str(fp32), "--precision", "int8", "--target", "cpu",
                                      "--calib-count", "2", "--out", str(tmp_path / "d.int8-cpu.onnx"), "--eval", str(heldout_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d.int8-cpu.json").read_text())["calib"] == "calib_data"


def test_onnx_steps_run_without_torch(quantized, calib_dir, tmp_path):
    import subprocess
    import sys
    import textwrap

    import cv2

    from hdme.conventions import save_sigma_map

    fp32, _, _ = quantized
    heldout_dir = tmp_path / "heldout"
    heldout_dir.mkdir()
    rng = np.random.default_rng(4)
    cv2.imwrite(str(heldout_dir / "s.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    save_sigma_map(heldout_dir / "s.npy", rng.uniform(0, 5, (SIZE, SIZE)).astype(np.float32))
    out = tmp_path / "m.int8-cpu.onnx"
    code = f"""
        import sys
        sys.modules["torch"] = None  # as in an install without the training extra
        from typer.testing import CliRunner
        from hdme.cli import app
        run = lambda *args: CliRunner().invoke(app, list(args))
        r = run("export", "quantize", {str(fp32)!r}, "--precision", "int8", "--target", "cpu",
                "--calib", {str(calib_dir)!r}, "--out", {str(out)!r}, "--eval", {str(heldout_dir)!r})
        assert r.exit_code == 0, (r.output, r.exception)
        r = run("export", "quantize", {str(fp32)!r}, "--precision", "fp16", "--out", {str(tmp_path / 'f.fp16.onnx')!r})
        print(r.exception)
        r = run("export", "triton", "--model", {str(out)!r}, "--repo", {str(tmp_path / 'repo')!r})
        assert r.exit_code == 0, (r.output, r.exception)
        print("ok")
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "ok"
    assert "hdme data make" in lines[-2]  # the synthetic held-out set needs torch: one clear line
    assert not (tmp_path / "f.fp16.onnx").exists()
    record = json.loads((tmp_path / "m.int8-cpu.json").read_text())
    assert record["heldout"] == "heldout, 1 images" and record["calib"] == str(calib_dir)  # the folder as it was given
    assert (tmp_path / "repo" / "m-int8-cpu" / "1" / "model.onnx").is_file()


def test_calibration_folder_is_checked_before_the_held_out_set_is_made(tmp_path, monkeypatch):
    from hdme.errors import HdmeError
    from hdme.export import calibration, evaluate
    from runtime_support import tiny_onnx

    made = []
    monkeypatch.setattr(evaluate, "heldout_set", lambda *a, **k: made.append(1))
    model = tiny_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["export", "quantize", str(model), "--precision", "int8", "--calib", str(tmp_path / "none")])
    assert isinstance(result.exception, HdmeError) and "calibration folder not found" in str(result.exception)
    assert made == []
    # The default is the source tree's calib_data/; an installed package has none and says so.
    assert calibration.default_calibration_folder().name == "calib_data"
    monkeypatch.setattr(calibration, "__file__", str(tmp_path / "site-packages" / "hdme" / "export" / "calibration.py"))
    result = CliRunner().invoke(app, ["export", "quantize", str(model), "--precision", "int8"])
    assert isinstance(result.exception, HdmeError) and "no calibration images" in str(result.exception)
    assert "--calib DIR" in str(result.exception) and made == []
