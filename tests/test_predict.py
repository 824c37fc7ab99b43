"""hdme predict: exact input size, large-image policies, odd files, atomic outputs, exit status."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.conventions import load_sigma_map
from hdme.errors import HdmeError
from hdme.images import PREDICTION_MARKER
from hdme.runtime.predict import DefocusPredictor, blend_window, tile_starts
from runtime_support import shaped_onnx, textured_rgb, tiny_onnx


def _written(folder):
    """The files a prediction wrote to ``folder``, besides the marker that keeps them from being read as inputs."""
    names = sorted(p.name for p in folder.iterdir())
    assert PREDICTION_MARKER in names
    return [n for n in names if n != PREDICTION_MARKER]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {"tiny": tiny_onnx(d / "tiny.onnx"), "m8": tiny_onnx(d / "m8.onnx", multiple=8),
            "const": tiny_onnx(d / "const.onnx", constant=0.25)}


@pytest.mark.parametrize("h, w", [(32, 32), (33, 47), (61, 40)])
def test_predict_returns_sigma_of_exactly_the_input_size(models, h, w):
    rgb = textured_rgb(h, w)
    for model in (models["tiny"], models["m8"]):
        sigma = DefocusPredictor(model).predict(rgb)
        assert sigma.shape == (h, w) and sigma.dtype == np.float32
        assert 0.0 <= sigma.min() and sigma.max() <= 10.0
    # Padding to a multiple of 8 (reflect) changes only pixels near the padded border (one pass:
    # a mirrored view is padded on its own bottom/right, the image's top/left).
    a = DefocusPredictor(models["tiny"], tta="none").predict(rgb)
    b = DefocusPredictor(models["m8"], tta="none").predict(rgb)
    np.testing.assert_allclose(a[:-2, :-2], b[:-2, :-2], atol=1e-5)


def test_predict_rejects_tiny_and_non_rgb_arrays(models):
    predictor = DefocusPredictor(models["tiny"])
    with pytest.raises(HdmeError, match="at least 32 px"):
        predictor.predict(textured_rgb(31, 64))
    with pytest.raises(HdmeError, match="RGB uint8"):
        predictor.predict(np.zeros((40, 40, 3), np.float32))
    assert predictor.predict(textured_rgb(40, 40)[..., 0]).shape == (40, 40)  # grey array


def test_downscaling_rescales_sigma_to_input_pixels(models):
    rgb = textured_rgb(64, 96)
    direct = DefocusPredictor(models["const"]).predict(rgb)
    np.testing.assert_allclose(direct, 2.5, atol=1e-4)
    halved = DefocusPredictor(models["const"], max_side=48)
    sigma = halved.predict(rgb)
    assert halved.last_plan.mode == "downscale" and halved.last_plan.work_hw == (32, 48)
    assert "downscaled 64x96 to 32x48" in halved.last_plan.describe(64, 96)  # H×W, as --size takes sizes
    assert sigma.shape == (64, 96)
    np.testing.assert_allclose(sigma, 5.0, atol=1e-3)  # 2.5 px at half size is 5 px at full size


def test_tiling_matches_one_pass_away_from_seams(models):
    rgb = textured_rgb(96, 160, seed=4)
    whole = DefocusPredictor(models["tiny"]).predict(rgb)
    tiled_predictor = DefocusPredictor(models["tiny"], tile=64, overlap=16)
    tiled = tiled_predictor.predict(rgb)
    assert tiled_predictor.last_plan.mode == "tile" and tiled_predictor.last_plan.tiles == 2 * 3
    assert tiled.shape == whole.shape
    # The 3×3 receptive field only sees tile borders in the outermost pixel of each tile, and
    # the blend window weights those pixels down.
    assert np.abs(tiled - whole).mean() < 0.01
    assert np.abs(tiled - whole).max() < 0.5


def test_tile_geometry():
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(300, 128, 16)
    assert starts[0] == 0 and starts[-1] == 300 - 128
    assert all(b - a <= 128 - 16 for a, b in zip(starts, starts[1:]))
    window = blend_window(8, 10, 3)
    assert window.shape == (8, 10) and window.min() > 0 and window[4, 5] == 1.0


def _write_inputs(folder):
    folder.mkdir()
    rgb = textured_rgb(70, 90)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "colour[bold].png"), bgr)
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([bgr, np.full((70, 90), 200, np.uint8)]))
    cv2.imwrite(str(folder / "deep.png"), bgr.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "odd.jpg"), bgr[:65, :77])
    cv2.imwrite(str(folder / "tiny.png"), bgr[:20, :20])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"colour[bold]": (70, 90), "grey": (70, 90), "alpha": (70, 90), "deep": (70, 90), "odd": (65, 77)}


def test_cli_predict_writes_maps_and_reports_bad_files(models, tmp_path):
    good = _write_inputs(tmp_path / "in")
    (tmp_path / "in" / "notes.gif").write_bytes(b"GIF89a")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), str(tmp_path / "in" / "notes.gif"),
                                      str(tmp_path / "clip.mp4"), "--out", str(out), "--model", str(models["tiny"])])
    assert result.exit_code == 1, result.output
    text = result.output
    assert "tiny.png: image is 20x20, smaller than 32 px" in text
    assert "corrupt.png: corrupt or unreadable image" in text
    assert "unsupported format '.gif'" in text
    assert "clip.mp4: a video, not an image" in text and f"hdme run {tmp_path / 'clip.mp4'}" in text
    assert "5 of 9 images done, 4 failed" in text
    # one size, one order (H×W) in the line of each image and in the table
    assert "odd.jpg: 65x77 whole, mean of 2 mirrored views" in text and text.count("65x77") == 2
    assert text.count("colour[bold].png") == 2  # its line and its table row: brackets are not markup
    assert "Traceback" not in text
    for name, hw in good.items():
        sigma = load_sigma_map(out / f"{name}.npy")
        assert sigma.shape == hw and sigma.dtype == np.float32
        picture = cv2.imread(str(out / f"{name}.png"))
        assert picture.shape[0] == hw[0] and picture.shape[1] > 2 * hw[1]  # input | map | scale bar
    assert _written(out) == sorted(f"{n}.{e}" for n in good for e in ("npy", "png"))


def test_cli_predict_all_good_exits_zero_and_honours_format(models, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(64, 64))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                                      "--model", str(models["tiny"]), "--format", "npy", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert _written(tmp_path / "o") == ["a.npy"]


def test_cli_predict_bad_model_is_one_line(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(64, 64))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                                      "--model", str(tmp_path / "nope.onnx")])
    assert result.exit_code != 0
    assert isinstance(result.exception, HdmeError) and "no such model file" in str(result.exception)
    assert not (tmp_path / "o").exists()


def test_cli_predict_zhuo_sim(tmp_path):
    pytest.importorskip("hdme.runtime.classic", reason="the classic baseline is not available")
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(64, 80))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--method", "zhuo-sim"])
    assert result.exit_code == 0, result.output
    assert load_sigma_map(tmp_path / "o" / "a.npy").shape == (64, 80)


def test_large_images_are_tiled_by_default(models):
    predictor = DefocusPredictor(models["tiny"])
    plan = predictor.plan(4096, 4096)
    assert plan.mode == "tile" and plan.work_hw == (1024, 1024) and plan.tiles == 25
    assert predictor.plan(2048, 1536).mode == "direct"
    rgb = textured_rgb(40, 2100, seed=5)  # longer than 2048 px, yet cheap
    sigma = predictor.predict(rgb)
    assert predictor.last_plan.mode == "tile" and predictor.last_plan.tiles == 3
    assert sigma.shape == (40, 2100)
    assert np.abs(sigma - DefocusPredictor(models["tiny"], tile=4096).predict(rgb)).mean() < 0.01


@pytest.mark.parametrize("model", ["tiny", "m8"])  # m8: the image is padded to a multiple of 8
def test_tta_averages_sigma_over_the_mirrored_views(models, model):
    rgb = textured_rgb(37, 53, seed=5)
    one = DefocusPredictor(models[model], tta="none")
    single = one.predict(rgb)
    mirrored = one.predict(rgb[:, ::-1].copy())[:, ::-1]
    upside_down = one.predict(rgb[::-1].copy())[::-1]
    both = one.predict(rgb[::-1, ::-1].copy())[::-1, ::-1]
    assert np.abs(single - mirrored).max() > 0.05  # the random net is not mirror-symmetric
    flip = DefocusPredictor(models[model])  # the default for photos
    np.testing.assert_allclose(flip.predict(rgb), (single + mirrored) / 2, atol=1e-5)
    assert flip.last_plan.views == 2 and "mean of 2 mirrored views" in flip.last_plan.describe(37, 53)
    flip4 = DefocusPredictor(models[model], tta="flip4")
    np.testing.assert_allclose(flip4.predict(rgb), (single + mirrored + upside_down + both) / 4, atol=1e-5)
    assert "mirrored" not in one.last_plan.describe(37, 53)
    with pytest.raises(HdmeError, match="unknown test-time augmentation 'rotate'"):
        DefocusPredictor(models[model], tta="rotate")


def test_cli_predict_tta_option(models, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(textured_rgb(40, 56, seed=5), cv2.COLOR_RGB2BGR))
    runner = CliRunner()
    for tta in ("none", "flip"):
        result = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--model", str(models["tiny"]),
                                     "--out", str(tmp_path / tta), "--tta", tta])
        assert result.exit_code == 0, result.output
    expected = DefocusPredictor(models["tiny"], tta="flip").predict(textured_rgb(40, 56, seed=5))
    np.testing.assert_allclose(np.load(tmp_path / "flip" / "a.npy"), expected, atol=1e-5)
    assert not np.allclose(np.load(tmp_path / "none" / "a.npy"), expected, atol=1e-3)
    bad = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--model", str(models["tiny"]),
                              "--out", str(tmp_path / "x"), "--tta", "rotate"])
    assert isinstance(bad.exception, HdmeError) and "unknown test-time augmentation 'rotate'" in str(bad.exception)


@pytest.mark.parametrize("constant, plain, extended", [(0.25, 2.5, 2.5), (0.7, 7.0, 10.5), (0.9, 9.0, 36.0)])
def test_extended_range_hands_over_to_coarser_scales_near_the_top(tmp_path, constant, plain, extended):
    # A model that reads the same σ at every scale: at 1/s scale that means s times the blur.
    model = tiny_onnx(tmp_path / "c.onnx", constant=constant)
    rgb = textured_rgb(256, 192)
    np.testing.assert_allclose(DefocusPredictor(model, tta="none").predict(rgb), plain, rtol=1e-4)
    np.testing.assert_allclose(DefocusPredictor(model, tta="none", extend_range=True).predict(rgb), extended, rtol=1e-4)


def test_merge_keeps_the_full_scale_where_it_reads_small_whatever_the_coarse_scales_say():
    from hdme.runtime.predict import merge_scales

    full = np.array([[1.0, 5.0, 7.0, 9.0]], np.float32)
    coarse = {2: np.array([[20.0, 20.0, 14.0, 18.0]], np.float32), 4: np.array([[40.0, 40.0, 40.0, 36.0]], np.float32)}
    np.testing.assert_allclose(merge_scales(full, coarse), [[1.0, 5.0, 10.5, 36.0]])


def test_cli_predict_says_when_the_map_saturates(tmp_path):
    model = tiny_onnx(tmp_path / "c.onnx", constant=0.9)
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(128, 128))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--model", str(model)])
    assert result.exit_code == 0
    assert "100% of pixels at the top of the range" in result.output and "--extend-range" in result.output
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o2"), "--model", str(model),
                                      "--extend-range"])
    assert result.exit_code == 0 and "100% of pixels at the top" in result.output and "--extend-range reads" not in result.output
    assert np.allclose(load_sigma_map(tmp_path / "o2" / "a.npy"), 36.0, rtol=1e-3)
    # 64 px shrunk 4× is below the network's minimum: only the half scale runs, up to 20 px
    small = DefocusPredictor(model, tta="none", extend_range=True)
    np.testing.assert_allclose(small.predict(textured_rgb(64, 64)), 18.0, rtol=1e-4)
    assert small.last_range_max == 20.0
    model = tiny_onnx(tmp_path / "d.onnx", constant=0.5)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o3"), "--model", str(model)])
    assert result.exit_code == 0 and "top of the range" not in result.output


def test_cli_predict_says_when_a_jpeg_was_compressed_hard_enough_to_read_blur_low(models, tmp_path):
    for name, quality in (("hard.jpg", 20), ("fine.jpg", 90)):
        cv2.imwrite(str(tmp_path / name), textured_rgb(64, 64), [cv2.IMWRITE_JPEG_QUALITY, quality])
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "hard.jpg"), str(tmp_path / "fine.jpg"), "--out",
                                      str(tmp_path / "o"), "--model", str(models["tiny"])])
    assert result.exit_code == 0
    warnings = [line for line in result.output.splitlines() if "saved as JPEG" in line]
    assert len(warnings) == 1 and "quality about 20" in warnings[0]
    assert result.output.index("hard.jpg:") < result.output.index("quality about 20") < result.output.index("fine.jpg:")


def test_inputs_sharing_a_stem_never_overwrite_each_other(models, tmp_path):
    # d/a/x.jpg and d/b/x.png share a stem; d/b/x_2.png is a real input with the name a suffix would give
    images = {"a/x.jpg": textured_rgb(48, 64, seed=1), "b/x.png": textured_rgb(48, 64, seed=2),
              "b/x_2.png": np.full((48, 64, 3), 128, np.uint8)}
    for rel, rgb in images.items():
        (tmp_path / "d" / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "d" / rel), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "d" / "a"), str(tmp_path / "d" / "b"), "--out", str(out),
                                      "--model", str(models["tiny"]), "--format", "npy", "--tta", "none"])
    assert result.exit_code == 0, result.output
    assert _written(out) == ["x.npy", "x_2.npy", "x_3.npy"]
    predictor = DefocusPredictor(models["tiny"], tta="none")
    from hdme.images import read_image

    for rel, name in (("a/x.jpg", "x"), ("b/x.png", "x_3"), ("b/x_2.png", "x_2")):
        np.testing.assert_allclose(np.load(out / f"{name}.npy"), predictor.predict(read_image(tmp_path / "d" / rel)), atol=1e-5)


def _unwritable(tmp_path):
    import os
    from pathlib import Path

    if os.geteuid() == 0:
        return Path("/sys/hdme-out")  # root may write anywhere but sysfs
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out"


def test_unusable_output_folder_is_one_line(models, tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(40, 40))
    (tmp_path / "f").write_text("a file")
    for out, expected in ((tmp_path / "f", "exists and is not a folder"),
                          (tmp_path / "f" / "sub", f"{tmp_path / 'f'}: exists and is not a folder"),
                          (_unwritable(tmp_path), "cannot create the folder")):
        result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--out", str(out),
                                          "--model", str(models["tiny"])])
        assert isinstance(result.exception, HdmeError), (out, result.exception)
        assert expected in str(result.exception)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_models_breaking_the_contract_are_one_line(tmp_path, engine):
    import importlib.util
    import re

    if importlib.util.find_spec(engine) is None:
        pytest.skip(f"{engine} is not installed")
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(40, 48))
    grey = shaped_onnx(tmp_path / "grey.onnx", [1, 1, 8, 8], 1)
    three = shaped_onnx(tmp_path / "three.onnx", ["N", 3, "H", "W"], 3)
    # Free dimensions print as their names where the engine keeps them, else as '?'.
    for model, expected in ((grey, r"'image' is \[1,1,8,8\], expected \[N,3,H,W\]"),
                            (three, r"'sigma' is \[(N|\?),3,(H|\?),(W|\?)\], expected \[N,1,H,W\]")):
        result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--model", str(model),
                                          "--backend", engine])
        assert isinstance(result.exception, HdmeError) and re.search(expected, str(result.exception)), result.exception
    # A fixed-size model is within the contract, but not for images of another size: each fails in one line.
    fixed = shaped_onnx(tmp_path / "fixed.onnx", [1, 3, 64, 64], 1)
    cv2.imwrite(str(tmp_path / "b.png"), textured_rgb(64, 64))
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(tmp_path / "o"),
                                      "--model", str(fixed), "--tta", "none", "--backend", engine])
    assert result.exit_code == 1, result.output
    assert "a.png: fixed.onnx failed on a [1,3,40,48] input" in result.output
    assert "1 of 2 images done, 1 failed" in result.output


def test_rerun_into_a_subfolder_of_the_inputs_ignores_earlier_outputs(models, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), textured_rgb(40, 40))
    for out in ("maps", "maps", "maps2"):
        result = CliRunner().invoke(app, ["predict", str(photos), "--out", str(photos / out), "--model", str(models["tiny"])])
        assert result.exit_code == 0 and "1 of 1 images done" in result.output, result.output
    for out in ("maps", "maps2"):
        assert _written(photos / out) == ["a.npy", "a.png"]


def test_progress_follows_the_tiles_and_the_png_scale_is_an_option(models, tmp_path):
    predictor = DefocusPredictor(models["const"], tile=64, overlap=16)
    calls = []
    predictor.predict(textured_rgb(96, 160), on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]
    cv2.imwrite(str(tmp_path / "a.png"), textured_rgb(40, 40))
    pictures = {}
    for scale in (None, "5"):
        out = tmp_path / f"o{scale}"
        extra = ["--scale-max", scale] if scale else []
        result = CliRunner().invoke(app, ["predict", str(tmp_path / "a.png"), "--out", str(out), "--model", str(models["const"]), *extra])
        assert result.exit_code == 0, result.output
        pictures[scale] = cv2.imread(str(out / "a.png"))
    from hdme.conventions import colorize

    # σ is 2.5 px everywhere: the map's colour is a quarter up the default scale, half-way up 0–5 px
    assert np.abs(pictures[None][20, 60].astype(int) - colorize(np.full((1, 1), 2.5))[0, 0]).max() <= 1
    assert np.abs(pictures["5"][20, 60].astype(int) - colorize(np.full((1, 1), 2.5), 5.0)[0, 0]).max() <= 1
