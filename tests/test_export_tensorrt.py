import importlib.util
import json

import cv2
import numpy as np
import pytest

from hdme.errors import HdmeError
from hdme.export.calibration import (
    CalibrationSet,
    fit_to_size,
    read_calibration_cache,
    write_calibration_cache,
)
from hdme.sidecar import SIDECAR_KEYS, read_sidecar, sidecar_path, write_sidecar
from hdme.export.tensorrt import (
    CALIB_BATCH,
    DEFAULT_SHAPES,
    Profile,
    build_mode,
    calibration_shape,
    parse_shapes,
    validate_profile,
)

needs_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed (needs an NVIDIA GPU)"
)


def _tensorrt_major() -> int | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    import tensorrt

    return int(tensorrt.__version__.split(".")[0])


# TensorRT 11 removed the INT8 calibrators along with the INT8 builder flag.
needs_tensorrt_10 = pytest.mark.skipif(
    _tensorrt_major() != 10, reason="needs TensorRT 10 (its INT8 calibrators are gone in 11) and an NVIDIA GPU"
)


def test_parse_shapes():
    p = parse_shapes("1x3x256x256:2x3x480x640:4x3x720x1280")
    assert p == Profile((1, 3, 256, 256), (2, 3, 480, 640), (4, 3, 720, 1280))
    assert p.as_dict()["opt"] == [2, 3, 480, 640]
    assert parse_shapes("1x3x64x64") == Profile(*[(1, 3, 64, 64)] * 3)
    for bad in ("1x3x256", "1x3x256x256:1x3x480x640", "ax3x2x2", "0x3x64x64", "1x3x64x64:1x3x64x64:1x3x64x64:1x3x64x64"):
        with pytest.raises(HdmeError):
            parse_shapes(bad)


def test_validate_profile():
    dynamic = [None, 3, None, None]
    validate_profile(parse_shapes("1x3x256x256:1x3x480x640:1x3x720x1280"), 16, dynamic)
    with pytest.raises(HdmeError, match="multiples of 32"):
        validate_profile(parse_shapes("1x3x256x256:1x3x480x640:1x3x720x1280"), 32, dynamic)
    with pytest.raises(HdmeError, match="3 channels"):
        validate_profile(parse_shapes("1x1x64x64"), 8, dynamic)
    with pytest.raises(HdmeError, match="min > opt"):
        validate_profile(parse_shapes("1x3x128x128:1x3x64x64:1x3x256x256"), 8, dynamic)
    with pytest.raises(HdmeError, match="opt > max"):
        validate_profile(parse_shapes("1x3x64x64:4x3x64x64:2x3x64x64"), 8, dynamic)
    with pytest.raises(HdmeError, match="static with size 256"):
        validate_profile(parse_shapes("1x3x128x128:1x3x256x256:1x3x256x256"), 8, [1, 3, 256, 256])


def test_default_profile_covers_720p_and_1080p_frames_as_the_runtime_pads_them():
    from hdme.export.onnx import input_dims, load_onnx, network_multiple
    from hdme.runtime.backends.tensorrt import fit_profile
    from hdme.runtime.predict import pad_to_multiple
    from hdme.weights import find_weights

    model = load_onnx(find_weights("hdme-edge")["onnx"])
    multiple = network_multiple(model)
    profile = parse_shapes(DEFAULT_SHAPES)
    validate_profile(profile, multiple, input_dims(model))
    padded = {}
    for h, w in ((720, 1280), (1080, 1920), (480, 640), (256, 256)):
        shape = pad_to_multiple(np.zeros((1, 3, h, w), np.float32), multiple).shape
        fit_profile(shape, profile.min, profile.max)
        padded[h, w] = shape
    assert padded[720, 1280] == profile.opt  # the shape TensorRT tunes its kernels for
    assert padded[1080, 1920] == profile.max


def test_calibration_shape_keeps_static_axes():
    assert calibration_shape([None, 3, None, None], (256, 256)) == (CALIB_BATCH, 3, 256, 256)
    assert calibration_shape([1, 3, 480, 640], (256, 256)) == (1, 3, 480, 640)
    assert calibration_shape([None, 3, 320, None], (256, 256)) == (CALIB_BATCH, 3, 320, 256)
    for dims in ([None, 3, None, None], [1, 3, 480, 640], [None, 3, 320, None]):
        shape = calibration_shape(dims, (256, 256))
        validate_profile(Profile(shape, shape, shape), 32, dims)


def test_build_mode_by_tensorrt_version():
    assert build_mode("fp16", None, 10) == ("fp16", "strong")
    assert build_mode("int8", None, 11) == ("int8", "strong")
    assert build_mode("fp32", None, 11) == ("fp32", "strong")
    assert build_mode("fp32", "fp16", 10) == ("fp16", "flags")
    assert build_mode("fp32", "int8", 10) == ("int8", "flags")
    with pytest.raises(HdmeError, match="hdme export quantize MODEL.onnx --precision int8"):
        build_mode("fp32", "int8", 11)
    with pytest.raises(HdmeError, match="already int8"):
        build_mode("int8", "fp16", 10)
    with pytest.raises(HdmeError, match="expected one of"):
        build_mode("fp32", "int4", 10)


def _sidecar_info():
    return {
        "tensorrt_version": "10.9.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0", "precision": "int8",
        "profile": {"min": [1, 3, 256, 256], "opt": [1, 3, 736, 1280], "max": [4, 3, 1088, 1920]}, "multiple": 32,
        "onnx_sha256": "ab" * 32, "calib_sha256": None, "hdme_version": "0.1.0",
    }


def test_sidecar_round_trip_and_errors(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(HdmeError, match="m.engine.json is missing"):
        read_sidecar(engine)
    path = write_sidecar(engine, {**_sidecar_info(), "extra": 1})
    assert path == sidecar_path(engine) == tmp_path / "m.engine.json"
    assert list(json.loads(path.read_text())) == list(SIDECAR_KEYS)
    assert read_sidecar(engine) == _sidecar_info()
    with pytest.raises(ValueError, match="gpu_name"):
        write_sidecar(engine, {k: v for k, v in _sidecar_info().items() if k != "gpu_name"})
    path.write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(HdmeError, match="lacks tensorrt_version"):
        read_sidecar(engine)
    path.write_text("{not json")
    with pytest.raises(HdmeError, match="not valid JSON"):
        read_sidecar(engine)


def _write_images(folder, sizes):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        cv2.imwrite(str(folder / f"img_{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return folder


def test_calibration_batches_are_full_and_preprocessed_like_the_runtime(tmp_path):
    folder = _write_images(tmp_path / "calib", [(40, 40), (48, 64), (40, 52), (24, 24), (40, 40)])
    calib = CalibrationSet(folder, size=(32, 32))
    batches = list(calib.batches(2))
    assert [b.shape for b in batches] == [(2, 3, 32, 32)] * 2  # the fifth image does not fill a batch
    assert all(b.dtype == np.float32 and 0.0 <= b.min() and b.max() <= 1.0 for b in batches)
    # RGB / 255, centre crop, NCHW.
    bgr = cv2.imread(str(folder / "img_1.png"))
    expected = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[8:40, 16:48].transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(batches[0][1], expected, atol=1e-7)
    assert fit_to_size(np.zeros((24, 24, 3), np.uint8), (32, 32)).shape == (32, 32, 3)  # too small: resized
    with pytest.raises(HdmeError, match="fewer than one batch"):
        list(calib.batches(8))
    assert len(CalibrationSet(folder, size=(32, 32), count=3)) == 3


def test_calibration_hash_tracks_content_and_size(tmp_path):
    folder = _write_images(tmp_path / "calib", [(32, 32), (32, 32)])
    first = CalibrationSet(folder, size=(32, 32)).sha256
    assert CalibrationSet(folder, size=(32, 32)).sha256 == first
    assert CalibrationSet(folder, size=(16, 16)).sha256 != first
    cv2.imwrite(str(folder / "img_1.png"), np.full((32, 32, 3), 7, np.uint8))
    assert CalibrationSet(folder, size=(32, 32)).sha256 != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(HdmeError, match="no calibration images"):
        CalibrationSet(tmp_path / "empty")
    with pytest.raises(HdmeError, match="not found"):
        CalibrationSet(tmp_path / "absent")


def test_calibration_cache_is_bound_to_its_set(tmp_path):
    cache = tmp_path / "m.engine.calib"
    assert read_calibration_cache(cache, "aa") is None
    table = b"TRT-100900-EntropyCalibration2\nimage: 3c010a14\n"
    write_calibration_cache(cache, table, "aa")
    assert read_calibration_cache(cache, "aa") == table
    assert read_calibration_cache(cache, "bb") is None  # other images: recalibrate
    cache.write_bytes(b"raw table from elsewhere")
    assert read_calibration_cache(cache, "aa") is None


@needs_tensorrt
def test_build_fp32_engine_and_sidecar(tmp_path, tiny_export):
    from hdme.sidecar import file_sha256
    from hdme.export.tensorrt import build_engine

    _, result, _ = tiny_export
    engine = tmp_path / "tiny.engine"
    cache = tmp_path / "timing.cache"
    info = build_engine(result.path, engine, shapes="1x3x64x64:1x3x128x128:2x3x256x256", timing_cache=cache)
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0
    assert read_sidecar(engine) == info
    assert info["precision"] == "fp32" and info["onnx_sha256"] == file_sha256(result.path)
    assert info["profile"]["max"] == [2, 3, 256, 256] and info["multiple"] == 8  # hdme-tiny's


@needs_tensorrt_10
def test_calibrator_feeds_batches_and_caches(tmp_path):
    from hdme.export.calibration import write_calibration_cache
    from hdme.export.trt_calibrator import MinMaxCalibrator

    folder = _write_images(tmp_path / "calib", [(32, 32)] * 4)
    calib = CalibrationSet(folder, size=(32, 32))
    write_calibration_cache(tmp_path / "c.calib", b"entropy table", calib.sha256)  # an earlier release's
    calibrator = MinMaxCalibrator(calib, 2, tmp_path / "c.calib")
    assert calibrator.get_batch_size() == 2
    assert calibrator.get_batch(["image"]) and calibrator.get_batch(["image"])
    assert calibrator.get_batch(["image"]) is None
    assert calibrator.read_calibration_cache() is None
    calibrator.write_calibration_cache(b"table")
    assert calibrator.read_calibration_cache() == b"table"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_stops_before_building_where_no_cuda_library_reaches_a_gpu(tmp_path):
    from hdme.export.tensorrt import build_engine
    from hdme.cuda import open_cuda_api
    from hdme.weights import find_weights

    try:
        open_cuda_api().close()
    except HdmeError:
        pass
    else:
        pytest.skip("a CUDA library reaches a GPU here")
    # The GPU is looked up first: without one the build fails at once, not after building.
    engine = tmp_path / "m.engine"
    with pytest.raises(HdmeError, match="no CUDA library could use GPU 0"):
        build_engine(find_weights("hdme-edge")["onnx"], engine)
    assert list(tmp_path.iterdir()) == []


try:  # the TensorRT build test uses the shared hdme-tiny export; it needs torch as well
    from export_support import tiny_export  # noqa: F401,E402
except pytest.skip.Exception:
    pass
