"""The shipped default model: the weights load, match their recorded checksum, reproduce the
prediction recorded in their model card, and the ONNX export agrees with them."""

import hashlib
import json

import cv2
import numpy as np
import pytest

from hdme.conventions import rgb_to_input
from hdme.weights import DEFAULT_MODEL, find_weights


def reference_image() -> np.ndarray:
    """The card's reference input: a 96×128 colour checkerboard, sharp on the left half and
    Gaussian-blurred (σ = 3 px) on the right half."""
    yy, xx = np.mgrid[0:96, 0:128]
    board = ((yy // 8 + xx // 8) % 2).astype(np.float32)
    rgb = np.stack([0.2 + 0.6 * board, 0.3 + 0.4 * board, 0.7 - 0.5 * board], axis=-1)
    blurred = cv2.GaussianBlur(rgb, (0, 0), 3.0, borderType=cv2.BORDER_REFLECT)
    rgb[:, 64:] = blurred[:, 64:]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def shipped():
    files = find_weights(DEFAULT_MODEL)
    card = json.loads(files["card"].read_text())
    return files, card


def test_weights_match_their_recorded_checksum(shipped):
    files, card = shipped
    digest = hashlib.sha256(files["safetensors"].read_bytes()).hexdigest()
    assert digest == card["sha256"]
    assert files["safetensors"].stat().st_size <= 16 * 2**20


def _check_reference(sigma: np.ndarray, card: dict, atol: float) -> None:
    ref = card["reference_prediction"]
    grid = cv2.resize(sigma, tuple(ref["grid_size"][::-1]), interpolation=cv2.INTER_AREA)
    assert np.abs(grid - np.array(ref["grid"], np.float32)).max() <= atol
    left, right = float(sigma[:, 8:56].mean()), float(sigma[:, 72:120].mean())
    assert left == pytest.approx(ref["left_mean"], abs=atol)
    assert right == pytest.approx(ref["right_mean"], abs=atol)
    # What a user would check first: the blurred half reads as more blurred than the sharp half
    # (by how much is the model card's business: it under-reads this σ = 3 px pattern).
    assert right > left + 0.25


def test_torch_weights_reproduce_the_recorded_prediction(shipped):
    torch = pytest.importorskip("torch")
    from hdme.train.models import load_model

    files, card = shipped
    model = load_model(DEFAULT_MODEL).eval()
    with torch.no_grad():
        sigma = model(torch.from_numpy(rgb_to_input(reference_image())))[0, 0].numpy() * 10.0
    _check_reference(sigma, card, atol=1e-3)


def test_onnx_export_reproduces_the_recorded_prediction(shipped):
    files, card = shipped
    if "onnx" not in files:
        pytest.skip("no ONNX export shipped")
    from hdme.runtime.predict import DefocusPredictor

    sigma = DefocusPredictor(str(files["onnx"]), backend="onnxruntime", tta="none").predict(reference_image())
    _check_reference(sigma, card, atol=0.01)


def test_asking_for_int8_picks_the_shipped_cpu_int8_export(shipped):
    files, _ = shipped
    if "int8-cpu" not in files:
        pytest.skip("no INT8 export shipped")
    from hdme.runtime.backends import create_backend

    with create_backend(DEFAULT_MODEL, "onnxruntime", "int8") as backend:
        assert backend.precision == "int8" and backend.model_path == files["int8-cpu"]
