import subprocess
import sys

import numpy as np
import pytest
from export_support import SIZE, calib_dir, tiny_export, tiny_network, torch  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from hdme.cli import app
from hdme.errors import HdmeError

onnx = pytest.importorskip("onnx")


def test_export_parity_metadata_and_dynamic_axes(tiny_export):
    folder, result, model = tiny_export
    from hdme.export.onnx import input_dims, load_onnx, metadata, ort_session, run_onnx

    assert {r["size"] for r in result.parity} == {"256x256", "240x320"}
    assert all(r["max"] <= 0.01 for r in result.parity)
    graph = load_onnx(result.path)
    assert input_dims(graph)[:2] == [None, 3] and input_dims(graph)[2:] == [None, None]
    meta = metadata(graph)
    assert meta["model"] == "hdme-tiny" and meta["sigma_scale"] == "10" and meta["multiple"] == str(model.multiple)
    assert "RGB" in meta["input"] and "sigma" in meta["output"]

    # An independent size and batch, not one the export itself checked.
    x = np.random.default_rng(5).random((3, 3, 72, 100), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = run_onnx(ort_session(result.path), x)
    assert got.shape == (3, 1, 72, 100)
    assert np.abs(got - ref).max() * 10 <= 0.01
    assert 0.0 <= got.min() and got.max() <= 1.0 and got.std() > 0.01  # a varying, clamped σ/10 map


def test_global_context_exports_with_dynamic_size(tmp_path):
    from hdme.export.onnx import export_onnx, ort_session, run_onnx

    model = tiny_network(global_context=4)
    result = export_onnx(model, tmp_path / "context.onnx", log=lambda line: None)
    assert all(r["max"] <= 0.01 for r in result.parity)
    session = ort_session(result.path)
    x = np.random.default_rng(6).random((1, 3, 64, 160), dtype=np.float32)
    x[..., 64:] *= 0.2  # the image-wide mean differs from that of its first 64 columns
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
        left = model(torch.from_numpy(x[..., :64])).numpy()
    assert np.abs(run_onnx(session, x) - ref).max() * 10 <= 0.01
    assert np.abs(ref[..., :32] - left[..., :32]).max() * 10 > 0.01  # the context reached the whole image


def test_static_export_has_fixed_shape(tmp_path):
    from hdme.export.onnx import export_onnx, input_dims, load_onnx

    out = tmp_path / "static.onnx"
    result = export_onnx(tiny_network(), out, dynamic=False, size=(SIZE, 96), batch=2, log=lambda line: None)
    assert input_dims(load_onnx(out)) == [2, 3, SIZE, 96]
    assert [r["size"] for r in result.parity] == [f"{SIZE}x96"]


def test_export_rejects_size_off_the_multiple_and_leaves_nothing(tmp_path):
    from hdme.export.onnx import export_onnx

    model = tiny_network()
    with pytest.raises(HdmeError, match=f"multiples of {model.multiple}"):
        export_onnx(model, tmp_path / "bad.onnx", dynamic=False, size=(model.multiple * 8 - 4, 64), log=lambda line: None)
    with pytest.raises(HdmeError, match="opsets 13 to 20"):
        export_onnx(model, tmp_path / "bad.onnx", opset=11, log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda p: None, ["export", "quantize", "{p}/missing.onnx", "--precision", "fp16"], "no such ONNX file"),
        (lambda p: (p / "junk.onnx").write_bytes(b"\x08\x01 not protobuf"), ["export", "quantize", "{p}/junk.onnx", "--precision", "fp16"], "not a valid ONNX model"),
        (lambda p: (p / "w.safetensors").write_bytes(b"{}"), ["export", "quantize", "{p}/w.safetensors", "--precision", "int8"], "expected an .onnx file"),
        (lambda p: (p / "m.onnx").write_bytes(b""), ["export", "trt", "{p}/m.onnx", "--out", "{p}/m.engine"], "not a valid ONNX model"),
        (lambda p: None, ["export", "onnx", "--model", "{p}/w.onnx", "--out", "{p}/x.onnx"], ".safetensors"),
        (lambda p: (p / "empty").mkdir(), ["export", "quantize", "{fp32}", "--precision", "int8", "--calib", "{p}/empty"], "no calibration images"),
        (lambda p: None, ["export", "trt", "{fp32}", "--out", "{p}/m.engine", "--shapes", "1x3x60x64"], "multiples of 8"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_export, tmp_path, setup, args, message):
    setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    fp32 = str(tiny_export[1].path)
    result = CliRunner().invoke(app, [a.replace("{p}", str(tmp_path)).replace("{fp32}", fp32) for a in args])
    assert result.exit_code != 0
    assert isinstance(result.exception, HdmeError), result.output
    text = str(result.exception)
    assert message in text and "\n" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_error_is_a_red_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "hdme.cli", "export", "triton", "--model", str(tmp_path / "x.onnx"), "--repo", str(tmp_path / "r")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'x.onnx'}: no such model file"]
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_check_reports_percentiles_and_fails_above_atol(tiny_export, calib_dir):
    from hdme.runtime.compare import compare_models
    from hdme.export.quantize import convert_fp16

    folder, result, _ = tiny_export
    fp16 = folder / "check.fp16.onnx"
    convert_fp16(result.path, fp16)
    same = compare_models(result.path, result.path, size=(SIZE, SIZE), count=2)
    assert same["max"] == 0.0
    stats = compare_models(result.path, fp16, images=calib_dir, size=(SIZE, SIZE), count=4)
    assert stats["inputs"] == 4
    assert 0.0 < stats["median"] <= stats["p90"] <= stats["p99"] <= stats["max"] < 0.1
    runner = CliRunner()
    args = ["export", "check", str(result.path), str(fp16), "--images", str(calib_dir), "--size", f"{SIZE}x{SIZE}", "--count", "4"]
    passed = runner.invoke(app, args + ["--atol", "0.1"])
    assert passed.exit_code == 0 and "PASS" in passed.output, passed.output
    failed = runner.invoke(app, args + ["--atol", f"{stats['max'] / 2}"])
    assert failed.exit_code == 1 and "FAIL" in failed.output
