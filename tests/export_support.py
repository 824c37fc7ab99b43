"""Shared fixtures of the export tests: a small hdme-tiny export, calibration images, held-out data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exporting from PyTorch needs torch")

SIZE = 64


def tiny_network(**overrides):
    """hdme-tiny with its BatchNorm statistics taken from shuffled images and its output centred,
    so that σ varies over the image instead of clamping to 0 as a fresh network's does: the
    numerical errors of export and quantisation then show in the output. A GlobalContext block
    (``global_context=width``) gets random weights instead of its identity start."""
    from hdme.train.models import create_model

    torch.manual_seed(0)
    model = create_model("hdme-tiny", **overrides)
    if model.context is not None:
        torch.nn.init.normal_(model.context.expand.weight, std=0.5)
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1) * 0.5 + images * 0.5
    raw = {}
    hook = model.out.register_forward_hook(lambda m, i, o: raw.__setitem__("out", o))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the pass
                m.reset_running_stats()
        model.train()
        model(images)
        model.eval()
        model(images)
        model.out.bias += 0.3 - raw["out"].mean()
    hook.remove()
    return model


def write_calibration_images(folder: Path, count: int = 8, size: int = SIZE, seed: int = 0) -> Path:
    """COCO_shuffle-style PNGs: pixel-shuffled crops of a bundled photograph."""
    from skimage import data as samples

    from hdme.train.synth import shuffle_pixels

    folder.mkdir(parents=True, exist_ok=True)
    photo = torch.from_numpy(samples.astronaut()).permute(2, 0, 1).float() / 255.0
    rng = np.random.default_rng(seed)
    for i in range(count):
        y, x = rng.integers(0, photo.shape[1] - size, 2)
        crop = shuffle_pixels(photo[None, :, y : y + size, x : x + size], generator=torch.Generator().manual_seed(seed + i))[0]
        rgb = (crop.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        cv2.imwrite(str(folder / f"calib_{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(folder, FP32 ONNX path, PyTorch model) of the small hdme-tiny export."""
    from hdme.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("export")
    model = tiny_network()
    result = export_onnx(model, folder / "hdme-tiny.onnx", log=lambda line: None)
    return folder, result, model


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory):
    return write_calibration_images(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="session")
def heldout():
    from hdme.export.evaluate import heldout_set

    return heldout_set(f"synthetic:4,size={SIZE}")
