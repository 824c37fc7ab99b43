"""hdme run --temporal-filter: static regions steadied, motion, cuts and focus changes followed."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.runtime.temporal import TemporalFilter
from runtime_support import textured_rgb, tiny_onnx

H, W = 96, 128


def scene(seed: int = 0) -> np.ndarray:
    """Fine texture over large shapes (a ramp and a dark disc), as real scenes have both."""
    image = textured_rgb(H, W, seed=seed)[..., ::-1].astype(np.float32) * 0.5
    image += np.linspace(0, 120, W, dtype=np.float32)[None, :, None]
    yy, xx = np.mgrid[:H, :W]
    image[(yy - H / 3) ** 2 + (xx - W / 3) ** 2 < (H / 4) ** 2] *= 0.3
    return image.astype(np.uint8)


def camera(image: np.ndarray, rng, level: float = 3.0) -> np.ndarray:
    """The frame a camera would give: ``image`` with sensor noise of ``level`` grey levels."""
    return np.clip(image + rng.normal(0, level, image.shape), 0, 255).astype(np.uint8)


def test_static_scene_is_steadied():
    rng = np.random.default_rng(0)
    steady, truth, image = TemporalFilter(), np.full((H, W), 3.0, np.float32), scene()
    raw, out = [], []
    for _ in range(30):
        sigma = truth + rng.normal(0, 0.15, truth.shape).astype(np.float32)  # the network's flicker
        raw.append(sigma)
        out.append(steady(camera(image, rng), sigma))
    raw_std, out_std = np.stack(raw[10:]).std(axis=0), np.stack(out[10:]).std(axis=0)
    assert np.median(out_std) < 0.5 * np.median(raw_std)
    assert abs(float(np.mean(out[10:])) - 3.0) < 0.02  # steadier, not biased


def test_moving_object_is_followed_not_smeared():
    rng = np.random.default_rng(1)
    steady, background = TemporalFilter(), scene(0)
    for step in range(12):
        x = 8 + 6 * step  # a bright, sharp square moving 6 px a frame over a blurred background
        frame, sigma = background.copy(), np.full((H, W), 4.0, np.float32)
        frame[30:60, x:x + 30] = 255
        sigma[30:60, x:x + 30] = 0.5
        out = steady(camera(frame, rng), sigma + rng.normal(0, 0.1, sigma.shape).astype(np.float32))
    assert np.median(out[34:56, x + 4:x + 26]) == pytest.approx(0.5, abs=0.1)  # where it is now
    assert np.median(out[34:56, x - 20:x - 8]) == pytest.approx(4.0, abs=0.1)  # where it was two frames ago


def test_a_focus_change_without_texture_is_followed_at_once():
    rng = np.random.default_rng(2)
    steady, flat = TemporalFilter(), np.full((H, W, 3), 128, np.uint8)
    for _ in range(10):
        steady(camera(flat, rng), np.full((H, W), 1.0, np.float32))
    out = steady(camera(flat, rng), np.full((H, W), 4.0, np.float32))  # the picture barely changes, σ does
    assert np.percentile(np.abs(out - 4.0), 99) < 0.05


def test_cut_and_size_change_start_afresh_and_output_is_not_shared():
    rng = np.random.default_rng(3)
    steady = TemporalFilter()
    for _ in range(5):
        first = steady(camera(scene(0), rng), np.full((H, W), 1.0, np.float32))
    cut = steady(camera(scene(5)[::-1, ::-1].copy(), rng), np.full((H, W), 2.0, np.float32))  # another scene
    assert np.percentile(np.abs(cut - 2.0), 90) < 0.05
    first[:] = 99  # what the filter handed out is the caller's
    assert steady(camera(scene(5)[::-1, ::-1].copy(), rng), np.full((H, W), 2.0, np.float32)).max() < 3
    small = np.full((48, 64), 7.0, np.float32)
    np.testing.assert_array_equal(steady(camera(scene(0)[:48, :64].copy(), rng), small), small)
    with pytest.raises(ValueError):
        TemporalFilter(static_weight=0.0)


def test_run_temporal_filter_steadies_a_static_video(tmp_path):
    import cv2

    model = tiny_onnx(tmp_path / "tiny.onnx")
    rng = np.random.default_rng(4)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):  # a static scene with sensor noise, losslessly stored
        cv2.imwrite(str(folder / f"{k:02d}.png"), camera(scene(1), rng, level=4.0))
    stds = {}
    for flag in ([], ["--temporal-filter"]):
        maps = tmp_path / f"maps{len(flag)}"
        result = CliRunner().invoke(app, ["run", str(folder), "--model", str(model), "--save-maps", str(maps),
                                          "--map-format", "npy", *flag])
        assert result.exit_code == 0, result.output
        stack = np.stack([np.load(p) for p in sorted(maps.glob("*.npy"))])
        assert stack.shape == (12, H, W)
        stds[bool(flag)] = float(np.median(stack[4:].std(axis=0)))
    assert stds[True] < 0.6 * stds[False]
