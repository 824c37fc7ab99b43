"""Focus sweep (autofocus) and thin-lens depth."""

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.errors import HdmeError
from hdme.runtime.classic import ZhuoSimPredictor
from hdme.runtime.focus import (
    Lens,
    Target,
    distances_from_sigma,
    focus_position,
    focus_sweep,
    is_unimodal,
    parse_targets,
    sigma_at_distance,
)

FOCUS_FRAME = 6


def sweep_frames(count: int = 11, slope: float = 0.6, floor: float = 0.3) -> list[np.ndarray]:
    """A textured scene rendered at σ_k = slope·|k − FOCUS_FRAME| + floor, frame by frame."""
    rng = np.random.default_rng(2)
    scene = cv2.resize(rng.integers(0, 256, (16, 20, 3)).astype(np.uint8), (160, 128), interpolation=cv2.INTER_NEAREST)
    return [cv2.GaussianBlur(scene, (0, 0), slope * abs(k - FOCUS_FRAME) + floor) for k in range(count)]


class CurvePredictor:
    """Injected σ: frame k of the sweep has the uniform σ curve[k] (frames identified by call order)."""

    def __init__(self, curve):
        self.curve = iter(curve)

    def predict(self, rgb):
        return np.full(rgb.shape[:2], next(self.curve), np.float32)


def test_sweep_with_zhuo_sim_finds_the_focused_frame():
    targets = parse_targets("40,40;120,90", "60,50,30,20")
    result = focus_sweep(sweep_frames(), targets, ZhuoSimPredictor())
    for t in result["targets"]:
        assert t["focus_frame"] == FOCUS_FRAME
        assert abs(t["focus_position"] - FOCUS_FRAME) <= 0.5
        assert t["unimodal"] and not t["at_sweep_end"]
        assert t["sigma"][0] > t["sigma"][FOCUS_FRAME] + 2.0  # frame 0 is 3.6 px blurred vs 0.3 px


def test_sub_frame_position_is_exact_for_the_thin_lens_curve():
    k = np.arange(10)
    for true_focus in (3.0, 4.3, 5.75):
        curve = np.sqrt((0.8 * (k - true_focus)) ** 2 + 0.4**2)
        frame, position = focus_position(curve)
        assert frame == int(round(true_focus)) and position == pytest.approx(true_focus, abs=1e-9)
        gapped = curve.copy()
        gapped[int(round(true_focus)) - 1] = np.nan  # an unreadable frame beside the minimum: the parabola spans it
        assert focus_position(gapped) == pytest.approx((int(round(true_focus)), true_focus), abs=1e-9)
    # a linear model σ = a|k − k_f| + floor is V-shaped: the parabola on σ² still lands within 0.1 frame
    _, position = focus_position(0.6 * np.abs(k - 4.3) + 0.3)
    assert abs(position - 4.3) < 0.1


def test_injected_predictor_and_unimodality():
    bimodal = [3.0, 1.0, 2.5, 0.5, 2.0, 3.0]
    result = focus_sweep([np.zeros((40, 40, 3), np.uint8)] * len(bimodal), [Target(20, 20)], CurvePredictor(bimodal))
    (t,) = result["targets"]
    assert t["focus_frame"] == 3 and not t["unimodal"]
    assert is_unimodal([3.0, 2.0, 2.02, 1.0, 1.5, 3.0])  # a wiggle below the tolerance
    edge = focus_position([0.5, 1.0, 2.0])
    assert edge == (0, 0.0)


def test_cli_sweep_skips_an_unreadable_frame_and_keeps_its_place(tmp_path):
    from hdme.cli import app

    paths = []
    for k, frame in enumerate(sweep_frames()):
        paths.append(tmp_path / f"frame_{k:02d}.png")
        cv2.imwrite(str(paths[-1]), frame[..., ::-1])
    paths[FOCUS_FRAME + 1].write_bytes(b"not a png")  # beside the in-focus frame, so the parabola must span the gap
    out_json = tmp_path / "sweep.json"
    args = ["focus-sweep", *map(str, paths), "--points", "80,64", "--method", "zhuo-sim", "--json", str(out_json)]
    result = CliRunner().invoke(app, [*args, "--plot", str(tmp_path / "sweep.png")])
    assert result.exit_code == 0, result.output
    assert f"skipping frame {paths[FOCUS_FRAME + 1]}: corrupt or unreadable image" in result.output
    doc = json.loads(out_json.read_text())
    (t,) = doc["targets"]
    assert doc["gaps"] == [FOCUS_FRAME + 1] and t["sigma"][FOCUS_FRAME + 1] is None and doc["sigma"][FOCUS_FRAME + 1] == [None]
    assert t["focus_frame"] == FOCUS_FRAME and abs(t["focus_position"] - FOCUS_FRAME) <= 0.5 and t["unimodal"]
    assert (tmp_path / "sweep.png").stat().st_size > 0
    for path in paths[:-2]:  # three readable frames are the least a sweep needs
        path.write_bytes(b"")
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, HdmeError)
    assert str(result.exception) == "a focus sweep needs at least 3 frames, got 2 of 11 readable"


def test_targets_parse_and_reject():
    assert parse_targets("1,2; 3,4", None) == [Target(1, 2), Target(3, 4)]
    assert parse_targets(None, "5,6,7,8") == [Target(5, 6, 7, 8)]
    for points, regions in (("1", None), ("a,b", None), (None, "1,2,0,3"), (None, None), ("-1,2", None)):
        with pytest.raises(HdmeError):
            parse_targets(points, regions)
    with pytest.raises(HdmeError):
        focus_sweep(sweep_frames(3), [Target(500, 5)], ZhuoSimPredictor())


def test_thin_lens_by_hand_and_round_trip():
    lens = Lens(focal_mm=50.0, f_number=2.0, pixel_um=5.0, focus_m=2.0)
    # s = 50·2000/1950 mm; R = f·s/(2N)·|1/2000 − 1/4000| mm = 0.16026 mm = 32.05 px; σ = R/2
    assert sigma_at_distance(np.array([4.0]), lens)[0] == pytest.approx(50 * (50 * 2000 / 1950) / 4 * 0.00025 / 0.005 / 2, rel=1e-9)
    near_d = np.array([0.5, 1.0, 1.5, 1.99])
    far_d = np.array([2.01, 3.0, 10.0, 100.0])
    near, _ = distances_from_sigma(sigma_at_distance(near_d, lens), lens)
    _, far = distances_from_sigma(sigma_at_distance(far_d, lens), lens)
    assert np.allclose(near, near_d, rtol=1e-9) and np.allclose(far, far_d, rtol=1e-9)
    # both answers blur equally: the near/far ambiguity
    n, f = distances_from_sigma(np.array([3.0]), lens)
    assert n[0] < 2.0 < f[0]
    assert sigma_at_distance(n, lens)[0] == pytest.approx(3.0) and sigma_at_distance(f, lens)[0] == pytest.approx(3.0)
    # beyond the blur of a point at infinity only the near solution exists
    beyond = sigma_at_distance(np.array([np.inf]), lens)[0] * 1.01
    n, f = distances_from_sigma(np.array([beyond]), lens)
    assert np.isinf(f[0]) and 0.05 < n[0] < 2.0
    with pytest.raises(HdmeError, match="must exceed the focal length"):
        Lens(focal_mm=50.0, f_number=2.0, pixel_um=5.0, focus_m=0.04)
    with pytest.raises(HdmeError, match=r"the pixel pitch \(µm\) must be a positive number, got nan"):
        Lens(focal_mm=50.0, f_number=2.0, pixel_um=float("nan"), focus_m=2.0)


def test_cli_focus_sweep_and_depth(tmp_path):
    from hdme.cli import app
    from hdme.conventions import save_sigma_map

    for k, frame in enumerate(sweep_frames(9)):
        cv2.imwrite(str(tmp_path / f"frame_{k:02d}.png"), frame)
    plot, out_json = tmp_path / "sweep.png", tmp_path / "sweep.json"
    runner = CliRunner()
    result = runner.invoke(app, ["focus-sweep", str(tmp_path), "--points", "40,40", "--method", "zhuo-sim", "--plot", str(plot), "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert json.loads(out_json.read_text())["targets"][0]["focus_frame"] == FOCUS_FRAME
    assert plot.stat().st_size > 10_000

    sigma = np.full((32, 32), 2.0, np.float32)
    save_sigma_map(tmp_path / "map.npy", sigma)
    out = tmp_path / "depth.npz"
    args = ["depth", str(tmp_path / "map.npy"), "--focal-mm", "50", "--f-number", "2", "--pixel-um", "5", "--focus-m", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "near/far ambiguity" in result.output
    maps = np.load(out)
    lens = Lens(50.0, 2.0, 5.0, 2.0)
    assert np.allclose(sigma_at_distance(maps["near_m"], lens), 2.0, rtol=1e-5)
    assert np.allclose(sigma_at_distance(maps["far_m"], lens), 2.0, rtol=1e-5)


def test_cli_sweep_and_depth_say_where_blur_tops_the_range_and_extend_range_reads_past_it(tmp_path):
    """The shipped model on a sweep whose ends are blurred far past 10 px: its curve flattens near
    9 px there and the CLI says so; with --extend-range the ends keep rising and nothing is said."""
    from hdme.cli import app

    rng = np.random.default_rng(0)
    scene = np.full((256, 256, 3), 128, np.uint8)
    for _ in range(200):
        centre, radius = tuple(int(v) for v in rng.integers(0, 256, 2)), int(rng.integers(5, 30))
        cv2.circle(scene, centre, radius, tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    sigmas = [24.0, 6.0, 0.5, 6.0, 24.0]
    for k, s in enumerate(sigmas):
        cv2.imwrite(str(tmp_path / f"frame_{k}.png"), cv2.GaussianBlur(scene, (0, 0), s))
    (tmp_path / "frame_5.png").write_bytes(b"")  # a gap is not one of the frames the line counts
    runner = CliRunner()
    curves = {}
    for extend in (False, True):
        out_json = tmp_path / f"sweep_{extend}.json"
        args = ["focus-sweep", *sorted(str(p) for p in tmp_path.glob("frame_*.png")), "--regions", "64,64,128,128",
                "--method", "hdme", "--backend", "onnxruntime", "--json", str(out_json)] + (["--extend-range"] if extend else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        (target,) = json.loads(out_json.read_text())["targets"]
        assert target["focus_frame"] == 2 and target["unimodal"] and target["sigma"][5] is None
        curves[extend] = target["sigma"][:5]
        warned = "reads in 2 of 5 frames at the top of the range" in result.output
        assert warned == (not extend) and (target["saturated_frames"] == 2) == (not extend), result.output
    assert max(curves[False]) < 10.0 and min(curves[True][0], curves[True][4]) > 15.0
    np.testing.assert_allclose(curves[True][1:4], curves[False][1:4], atol=0.05)  # the coarse scales stay out below 6 px

    args = ["depth", str(tmp_path / "frame_0.png"), "--focal-mm", "50", "--f-number", "2", "--pixel-um", "5", "--focus-m", "2",
            "--method", "hdme", "--backend", "onnxruntime"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "of pixels at the top of the range" in result.output and "--extend-range reads" in result.output
    result = runner.invoke(app, [*args, "--extend-range"])
    assert result.exit_code == 0 and "top of the range" not in result.output


def test_cli_sweep_and_depth_say_when_their_frames_were_compressed_hard(tmp_path):
    from hdme.cli import app
    from runtime_support import textured_rgb, tiny_onnx

    model = tiny_onnx(tmp_path / "tiny.onnx")
    frames = tmp_path / "frames"
    frames.mkdir()
    for k, quality in enumerate((20, 90, 25, 95)):
        cv2.imwrite(str(frames / f"f{k}.jpg"), textured_rgb(64, 64, seed=k), [cv2.IMWRITE_JPEG_QUALITY, quality])
    (frames / "f4.jpg").write_bytes(b"")  # unreadable: a gap, not one of the frames counted
    runner = CliRunner()
    result = runner.invoke(app, ["focus-sweep", str(frames), "--points", "32,32", "--method", "hdme", "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert "2 of 4 frames saved as JPEG below quality 30 (down to about 20)" in result.output
    lens = ["--focal-mm", "50", "--f-number", "2", "--pixel-um", "5", "--focus-m", "2", "--method", "hdme", "--model", str(model)]
    result = runner.invoke(app, ["depth", str(frames / "f2.jpg"), *lens])
    assert result.exit_code == 0 and "saved as JPEG at quality about 25" in result.output
    result = runner.invoke(app, ["depth", str(frames / "f1.jpg"), *lens])
    assert result.exit_code == 0 and "saved as JPEG" not in result.output
