"""The OpenVINO engine and its exporter: same outputs as ONNX Runtime at fp32, IR metadata read by
the contract, INT8 from the calibrated CPU Q/DQ layout, one-line refusals, and the CLI paths."""

from __future__ import annotations

import platform
import time

import cv2
import numpy as np
import pytest
from export_support import SIZE, calib_dir, heldout, tiny_export  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from hdme.cli import app
from hdme.contract import METADATA_KEYS, model_metadata, model_precision
from hdme.errors import HdmeError
from hdme.runtime.backends import create_backend, resolve_model
from runtime_support import textured_rgb, tiny_onnx, write_video

pytest.importorskip("openvino", reason="the OpenVINO engine needs hdme[openvino]")
from hdme.runtime.backends.openvino import OpenVINOBackend, cpu_precisions  # noqa: E402

X86 = platform.machine().lower() in ("x86_64", "amd64")
INT8_MAE_BOUND = 0.003  # σ/10: the most INT8 may add to FP32's MAE


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("ov") / "tiny.onnx", multiple=8)


@pytest.fixture(scope="module")
def irs(tiny_export, calib_dir, tmp_path_factory):
    """FP32 and INT8 IRs of the hdme-tiny export, and the INT8 one's error against its source."""
    from hdme.export.calibration import CalibrationSet
    from hdme.export.openvino import export_openvino

    _, result, _ = tiny_export
    folder = tmp_path_factory.mktemp("ir")
    export_openvino(result.path, folder / "fp32.xml", "fp32")
    int8_error = export_openvino(result.path, folder / "int8.xml", "int8", CalibrationSet(calib_dir, size=(SIZE, SIZE)))
    return result.path, folder / "fp32.xml", folder / "int8.xml", int8_error


def test_fp32_matches_onnxruntime_at_every_shape_and_repeat(onnx_path):
    rng = np.random.default_rng(0)
    with create_backend(onnx_path, "onnxruntime") as ort, create_backend(onnx_path, "openvino", "fp32") as ov:
        assert ov.precision == "fp32" and ov.multiple == 8 and ov.device == "cpu"
        # A shape that comes again gets a model compiled for it, beside inference: it must agree too.
        for shape in ((1, 3, 40, 48), (2, 3, 33, 47), (1, 3, 40, 48)):
            x = rng.random(shape, dtype=np.float32)
            np.testing.assert_allclose(ov.infer(x), ort.infer(x), atol=2e-5)
        ov._compiling[shape].result(timeout=120)
        np.testing.assert_allclose(ov.infer(x), ort.infer(x), atol=2e-5)
        assert shape in ov._static
        first = ov.infer(x)
        ov.infer(rng.random(shape, dtype=np.float32))
        assert np.array_equal(first, ov.infer(x))  # outputs are copies, not the engine's buffer


def test_a_shape_whose_fixed_compile_fails_keeps_running_on_the_dynamic_model(onnx_path, caplog):
    def cannot_fix(shape):
        raise HdmeError(f"cannot fix the input to {list(shape)}")

    x = textured_rgb(40, 48)[None].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    with create_backend(onnx_path, "openvino", "fp32") as backend:
        backend._compile_for = cannot_fix  # as a compile failing on the device would
        first = backend.infer(x)
        for _ in range(50):  # the second call starts the fixed-shape compile; later ones collect it
            np.testing.assert_allclose(backend.infer(x), first, atol=1e-6)
            if backend._dynamic_only:
                break
            time.sleep(0.01)
        assert backend._dynamic_only == {x.shape} and "running that shape on the dynamic model" in caplog.text
        np.testing.assert_allclose(backend.infer(x), first, atol=1e-6)
        assert not backend._compiling  # not tried again


def test_default_is_bf16_where_the_cpu_has_it_and_close_to_fp32(onnx_path):
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    with create_backend(onnx_path, "openvino", "fp32") as fp32, create_backend(onnx_path, "openvino") as default:
        expected = "bf16" if "bf16" in cpu_precisions() else "fp32"
        assert default.precision == expected and expected in default.describe()
        assert np.abs(default.infer(x) - fp32.infer(x)).max() < 0.01  # σ/10


def test_precisions_the_cpu_lacks_or_the_file_does_not_hold_are_refused_in_one_line(onnx_path, irs):
    backend = OpenVINOBackend(onnx_path, "fp32")
    with pytest.raises(HdmeError, match="this CPU has no bf16 arithmetic") as err:
        backend._precisions("fp32", "bf16", ("fp32",))
    assert "\n" not in str(err.value)
    assert backend._precisions("fp32", None, ("fp32",)) == ("fp32", "fp32")
    with pytest.raises(HdmeError, match="make an INT8 one with: hdme export openvino"):
        create_backend(onnx_path, "openvino", "int8")
    with pytest.raises(HdmeError, match="is an int8 model"):
        create_backend(irs[2], "openvino", "fp32")
    junk = irs[0].with_name("junk.onnx")
    junk.write_bytes(b"\x00not onnx at all")
    with pytest.raises(HdmeError, match="OpenVINO cannot read it") as err:
        create_backend(junk, "openvino")
    assert "\n" not in str(err.value)


def test_export_writes_ir_whose_metadata_the_contract_reads(irs):
    src, fp32, int8, _ = irs
    meta = model_metadata(fp32)
    assert model_precision(fp32) == "fp32" and meta["model"] == "hdme-tiny" and meta["multiple"] == model_metadata(src)["multiple"]
    renamed = int8.rename(int8.with_name("plain.xml"))
    int8.with_suffix(".bin").rename(renamed.with_suffix(".bin"))
    try:
        meta = model_metadata(renamed)
        assert model_precision(renamed) == "int8" and len(meta["calib_sha256"]) == 64
        assert meta["int8_target"] == "cpu"  # the CPU Q/DQ layout ONNX Runtime runs, read into the IR
        assert set(meta) <= set(METADATA_KEYS)
    finally:
        renamed.rename(int8)
        renamed.with_suffix(".bin").rename(int8.with_suffix(".bin"))
    assert not list(fp32.parent.glob(".*"))  # no staging left behind
    x = np.random.default_rng(2).random((1, 3, SIZE, SIZE), dtype=np.float32)
    with create_backend(src, "onnxruntime") as ort, create_backend(fp32, "openvino", "fp32") as ov:
        np.testing.assert_allclose(ov.infer(x), ort.infer(x), atol=2e-5)


def test_int8_ir_stays_within_the_mae_bound_of_fp32(irs, heldout):
    _, fp32, int8, error = irs
    assert error["mean"] > 0.0  # it was quantised
    from hdme.evaluation import evaluate
    from hdme.runtime.predict import DefocusPredictor

    mae = {}
    for path, precision in ((fp32, "fp32"), (int8, None)):
        predictor = DefocusPredictor(path, "openvino", precision=precision, tta="none")
        try:
            mae[predictor.backend.precision] = evaluate(predictor, heldout)["mean"]["mae"]
        finally:
            predictor.close()
    assert set(mae) == {"fp32", "int8"}
    assert mae["int8"] - mae["fp32"] < INT8_MAE_BOUND


def test_export_refuses_bad_requests_in_one_line(irs, tmp_path):
    from hdme.export.openvino import export_openvino, source_onnx

    src = irs[0]
    for call, pattern in (
        (lambda: export_openvino(src, tmp_path / "m.xml", "bf16"), "an OpenVINO IR is one of fp32, fp16, int8"),
        (lambda: export_openvino(src, tmp_path / "m.onnx"), r"written as NAME\.xml"),
        (lambda: export_openvino(src, tmp_path / "m.xml", "int8"), "needs calibration images"),
        (lambda: source_onnx(str(irs[2])), "expected an FP32 .onnx file or a shipped model name"),
        (lambda: source_onnx(str(tmp_path / "gone.onnx")), "no such model file"),
        (lambda: source_onnx("no-such-model"), "no shipped model named 'no-such-model'"),
    ):
        with pytest.raises(HdmeError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)
    assert not (tmp_path / "m.xml").exists()


@pytest.mark.skipif(not X86, reason="auto prefers OpenVINO on x86 CPUs")
def test_auto_prefers_openvino_on_x86_and_says_why(onnx_path):
    name, _, why = resolve_model(onnx_path)
    assert name == "openvino" and "x86 CPU" in why
    with create_backend(onnx_path) as backend:
        assert backend.name == "openvino" and "x86 CPU" in backend.selection


def test_cli_predict_run_and_bench_on_openvino(onnx_path, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(48, 64))
    video = write_video(tmp_path / "v.avi", frames=4, h=48, w=64)
    runner = CliRunner()
    base = ["--model", str(onnx_path), "--backend", "openvino"]
    result = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *base])
    assert result.exit_code == 0 and "openvino" in result.output, result.output
    assert np.load(tmp_path / "out" / "a.npy").shape == (48, 64)
    result = runner.invoke(app, ["run", str(video), *base, "--save-maps", str(tmp_path / "maps"), "--map-format", "npy"])
    assert result.exit_code == 0 and "4 frames" in result.output, result.output
    result = runner.invoke(app, ["bench", "latency", *base, "--size", "32x32", "--iters", "2", "--warmup", "1",
                                 "--json", str(tmp_path / "lat.json")])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads((tmp_path / "lat.json").read_text())["rows"]
    assert [(r["backend"], r["size"]) for r in rows] == [("openvino", "32x32")]
    maps = tmp_path / "set"
    maps.mkdir()
    cv2.imwrite(str(maps / "a.png"), textured_rgb(48, 64))
    np.save(maps / "a.npy", np.full((48, 64), 2.0, np.float32))
    result = runner.invoke(app, ["bench", "accuracy", "--dataset", str(maps), "--method", "hdme", *base,
                                 "--precision", "fp32", "--json", str(tmp_path / "acc.json")])
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "acc.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["tiny.onnx · openvino · fp32 · flip"]


def test_cli_int8_export_calibrates_on_the_source_trees_images_from_any_folder(onnx_path, tmp_path, monkeypatch):
    from hdme.export import calibration

    monkeypatch.chdir(tmp_path)  # a folder without calib_data/
    result = CliRunner().invoke(app, ["export", "openvino", str(onnx_path), "--precision", "int8", "--calib-count", "2",
                                      "--out", str(tmp_path / "m.xml")])
    assert result.exit_code == 0, result.output
    assert "on 2 calibration images" in result.output and (tmp_path / "m.bin").is_file()
    # An installed package has no calib_data/: INT8 asks for --calib, FP32 compares on seeded noise.
    monkeypatch.setattr(calibration, "__file__", str(tmp_path / "site-packages" / "hdme" / "export" / "calibration.py"))
    result = CliRunner().invoke(app, ["export", "openvino", str(onnx_path), "--precision", "int8", "--out", str(tmp_path / "n.xml")])
    assert isinstance(result.exception, HdmeError) and "--calib DIR" in str(result.exception)
    assert not (tmp_path / "n.xml").exists()
    result = CliRunner().invoke(app, ["export", "openvino", str(onnx_path), "--out", str(tmp_path / "f.xml")])
    assert result.exit_code == 0 and "on seeded noise" in result.output, result.output
