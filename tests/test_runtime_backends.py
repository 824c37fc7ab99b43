"""Backends: the shared interface on a tiny ONNX, auto selection, one-line errors, TensorRT logic."""

from __future__ import annotations

import importlib.util
import platform

import numpy as np
import onnxruntime as ort
import pytest

from hdme.errors import HdmeError
from hdme.runtime.backends import available_backends, create_backend, resolve_model
from hdme.cuda import grown_capacity, nbytes
from hdme.runtime.backends.tensorrt import SystemInfo, check_sidecar, fit_profile, sidecar_mismatches
from runtime_support import tiny_onnx


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return tiny_onnx(tmp_path_factory.mktemp("models") / "tiny.onnx")


def test_onnxruntime_backend_matches_direct_session(onnx_path):
    x = np.random.default_rng(1).random((2, 3, 33, 47), dtype=np.float32)
    direct = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with create_backend(onnx_path, "onnxruntime", provider="cpu", threads=1) as backend:
        y = backend.infer(x)
        y_timed, times = backend.infer_timed(x[:1])
        assert backend.name == "onnxruntime" and backend.precision == "fp32" and backend.device == "cpu"
    assert y.shape == (2, 1, 33, 47) and y.dtype == np.float32
    np.testing.assert_allclose(y, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_timed, direct[:1], rtol=1e-5, atol=1e-6)
    assert times.h2d is None and times.d2h is None and times.compute > 0
    assert y.std() > 1e-3  # the model responds to its input


def test_backend_rejects_wrong_input_layout(onnx_path):
    with create_backend(onnx_path) as backend, pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        backend.infer(np.zeros((1, 4, 8, 8), np.float32))


def test_auto_picks_engine_by_file_and_says_so(onnx_path, tmp_path):
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    expected = "openvino" if x86 and importlib.util.find_spec("openvino") else "onnxruntime"
    backend = create_backend(onnx_path)
    assert backend.name == expected
    assert backend.selection.startswith("auto:") and "tiny.onnx" in backend.selection
    assert resolve_model(onnx_path)[:2] == (expected, str(onnx_path))
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    assert resolve_model(engine)[0] == "tensorrt"
    multiple = create_backend(tiny_onnx(tmp_path / "m8.onnx", multiple=8))
    assert multiple.multiple == 8


@pytest.mark.parametrize(
    "make, backend, pattern",
    [
        (lambda d: d / "missing.onnx", "auto", "no such model file"),
        (lambda d: (d / "junk.onnx").write_bytes(b"\x00not onnx at all") and d / "junk.onnx", "onnxruntime", "not a loadable ONNX model"),
        (lambda d: (d / "notes.txt").write_text("hi") and d / "notes.txt", "auto", "not a model file"),
        (lambda d: d, "auto", "not a model file"),
        (lambda d: tiny_onnx(d / "t.onnx"), "torch", "runs on the onnxruntime or openvino backend, not torch"),
        (lambda d: tiny_onnx(d / "t.onnx"), "tensorflow", "unknown backend"),
        (lambda d: "no-such-shipped-model", "auto", "no shipped model named"),
    ],
)
def test_bad_models_give_one_line(tmp_path, make, backend, pattern):
    with pytest.raises(HdmeError, match=pattern) as err:
        create_backend(make(tmp_path), backend)
    assert "\n" not in str(err.value)


def test_precision_asked_of_a_file_must_be_its_own(onnx_path):
    with pytest.raises(HdmeError, match="is a fp32 model"):
        create_backend(onnx_path, "onnxruntime", precision="int8")


def test_available_backends_lists_what_is_installed():
    names = available_backends()
    assert names[0] == "onnxruntime"
    assert ("torch" in names) == (importlib.util.find_spec("torch") is not None)


def test_sidecar_mismatch_is_refused_with_a_rebuild_hint(tmp_path):
    here = SystemInfo("10.8.0.43", "NVIDIA Jetson AGX Orin", "8.7")
    built_here = {"tensorrt_version": "10.8.0.43", "gpu_name": "NVIDIA Jetson AGX Orin", "compute_capability": [8, 7], "precision": "fp16"}
    assert sidecar_mismatches(built_here, here) == []
    check_sidecar(tmp_path / "m.engine", built_here, here)
    other = {**built_here, "tensorrt_version": "10.3.0.26", "gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}
    problems = sidecar_mismatches(other, here)
    assert len(problems) == 3 and "TensorRT 10.3.0.26" in problems[0] and "8.0" in problems[1]
    with pytest.raises(HdmeError, match=r"rebuild it here with: hdme export trt .*m\.onnx --out .*m\.engine --precision fp16") as err:
        check_sidecar(tmp_path / "m.engine", other, here)
    assert "\n" not in str(err.value)
    # A different build number of the same release is the same TensorRT.
    assert sidecar_mismatches({**built_here, "tensorrt_version": "10.8.0.40"}, here) == []


def test_profile_and_buffer_sizing():
    fit_profile((1, 3, 480, 640), (1, 3, 256, 256), (4, 3, 1088, 1920))
    with pytest.raises(HdmeError, match="outside the engine's profile"):
        fit_profile((1, 3, 2160, 3840), (1, 3, 256, 256), (4, 3, 1088, 1920))
    with pytest.raises(HdmeError, match="outside the engine's profile"):
        fit_profile((8, 3, 480, 640), (1, 3, 256, 256), (4, 3, 1088, 1920))
    assert nbytes((1, 3, 480, 640), np.float32) == 3 * 480 * 640 * 4
    assert nbytes((1, 1, 480, 640), np.float16) == 480 * 640 * 2
    assert grown_capacity(1000, 800) == 1000
    assert grown_capacity(1000, 1200) == 1500
    assert grown_capacity(1000, 4000) == 4000


@pytest.mark.tensorrt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed (needs an NVIDIA GPU)")
def test_tensorrt_engine_matches_onnxruntime(onnx_path, tmp_path):
    from hdme.export.tensorrt import build_engine  # the export stage builds the engine and sidecar

    engine = tmp_path / "tiny.engine"
    build_engine(onnx_path, engine, precision="fp32", shapes="1x3x32x32:1x3x64x64:2x3x128x128")
    x = np.random.default_rng(2).random((1, 3, 64, 64), dtype=np.float32)
    with create_backend(engine) as trt_backend, create_backend(onnx_path) as ort_backend:
        y, times = trt_backend.infer_timed(x)
        np.testing.assert_allclose(y, ort_backend.infer(x), atol=1e-3)
        np.testing.assert_allclose(trt_backend.infer(x), y, atol=1e-6)  # CUDA-graph replay
        assert times.h2d is not None and times.d2h is not None


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_backend_runs_saved_weights(tmp_path):
    models = pytest.importorskip("hdme.train.models", reason="the model family is not available")
    import torch

    net = models.create_model("hdme-tiny").eval()
    models.save_model(net, tmp_path / "tiny.safetensors", card={"note": "test"})
    x = np.random.default_rng(3).random((1, 3, 40, 56), dtype=np.float32)
    with create_backend(tmp_path / "tiny.safetensors") as backend:
        assert backend.name == "torch" and backend.device == "cpu"
        y = backend.infer(x)
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    assert y.shape == (1, 1, 40, 56)
    np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_or_sidecar_is_one_line(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized plan")
    with pytest.raises(HdmeError, match="build record m.engine.json is missing"):
        create_backend(engine)
    (tmp_path / "m.engine.json").write_text(
        '{"tensorrt_version": "10.8.0", "gpu_name": "x", "compute_capability": "8.7", "precision": "fp16",'
        ' "profile": {}, "multiple": 32, "onnx_sha256": "", "calib_sha256": null, "hdme_version": "0.1.0"}'
    )
    with pytest.raises(HdmeError, match=r"'tensorrt' is not installed; install it with: pip install 'hdme\[trt\]'"):
        create_backend(engine)


def test_onnxruntime_provider_chains(onnx_path, tmp_path):
    from hdme.runtime.backends.onnxruntime import OnnxRuntimeBackend

    chain = OnnxRuntimeBackend._provider_chain("tensorrt", True, False, tmp_path / "cache", 1)
    assert [p if isinstance(p, str) else p[0] for p in chain] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_options = chain[0][1]
    assert trt_options["trt_engine_cache_enable"] and trt_options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert trt_options["trt_fp16_enable"] and not trt_options["trt_int8_enable"] and trt_options["device_id"] == 1
    assert (tmp_path / "cache").is_dir()
    assert OnnxRuntimeBackend._provider_chain("cpu", False, False, tmp_path, 0) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(HdmeError, match="this ONNX Runtime build has no CUDAExecutionProvider"):
            create_backend(onnx_path, provider="cuda")
    with pytest.raises(HdmeError, match="unknown graph optimisation level"):
        create_backend(onnx_path, graph_optimization="max")


INSUFFICIENT_DRIVER = "CUDA error: CUDA driver version is insufficient for CUDA runtime version"


def test_cuda_libraries_are_tried_in_order_past_one_that_cannot_start(monkeypatch):
    from hdme import cuda

    class DriverTooOld:  # cuda-python 13 under a CUDA 12 driver: installed, but cudaSetDevice fails
        def __init__(self, device_id):
            raise RuntimeError(INSUFFICIENT_DRIVER)

    class Starts:
        def __init__(self, device_id):
            self.device_id = device_id

    monkeypatch.setattr(cuda, "CUDA_APIS", {"cuda-python": DriverTooOld, "pycuda": Starts})
    assert isinstance(cuda.open_cuda_api(1), Starts)
    with pytest.raises(HdmeError, match="cuda-python: CUDA error: CUDA driver version is insufficient") as err:
        cuda.open_cuda_api(0, prefer="cuda-python")
    assert "pycuda" not in str(err.value)
    with pytest.raises(HdmeError, match="unknown CUDA buffer library 'cupy'"):
        cuda.open_cuda_api(0, prefer="cupy")
    monkeypatch.setattr(cuda, "CUDA_APIS", {"cuda-python": DriverTooOld, "pycuda": DriverTooOld})
    with pytest.raises(HdmeError, match=r"cuda-python: .*insufficient.*; pycuda: .*insufficient.*hdme doctor"):
        cuda.open_cuda_api()


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-python is not installed")
def test_installed_cuda_python_without_a_usable_gpu_falls_back_to_pycuda():
    from hdme.cuda import CudaPythonApi, PyCudaApi, open_cuda_api

    try:
        CudaPythonApi(0).close()
    except RuntimeError as exc:
        failure = str(exc)
    else:
        pytest.skip("cuda-python can use a GPU here")
    try:
        api = open_cuda_api(0)
    except HdmeError as exc:  # PyCUDA is missing or cannot start either: both were tried
        assert f"cuda-python: {failure}" in str(exc) and "pycuda: " in str(exc)
    else:
        assert isinstance(api, PyCudaApi)
        api.close()


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-python is not installed")
def test_cuda_python_stream_handle_is_the_raw_pointer():
    from cuda.bindings import runtime

    from hdme.cuda import CudaPythonApi

    # stream_handle reads nothing of the instance, which needs a GPU to construct.
    assert CudaPythonApi.stream_handle(object.__new__(CudaPythonApi), runtime.cudaStream_t(init_value=0x1234)) == 0x1234


def test_registry_matches_the_contract_and_the_engine_classes():
    from hdme.contract import ARTIFACT_KINDS
    from hdme.runtime.backends import ENGINES

    kinds = {kind.name for kind in ARTIFACT_KINDS}
    assert {k for engine in ENGINES for k in engine.runs} <= kinds
    for engine in ENGINES:
        if engine.installed():
            assert engine.backend_class().name == engine.name
            assert set(engine.precisions()) <= {"fp32", "fp16", "bf16", "int8"}


def test_auto_passes_engine_options_only_to_an_engine_that_takes_them(onnx_path):
    name, _, why = resolve_model(onnx_path, "auto", options={"provider": "cpu"})
    assert name == "onnxruntime" and ".onnx file" in why
    with create_backend(onnx_path, provider="cpu", graph_optimization="basic") as backend:
        assert backend.name == "onnxruntime" and backend.provider == "cpu"
    # options no engine that runs the file takes: one line, not an engine's TypeError
    with pytest.raises(HdmeError, match="no engine that runs it takes the option.*cuda_graphs"):
        create_backend(onnx_path, cuda_graphs=True)
