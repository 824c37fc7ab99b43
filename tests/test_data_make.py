import json
import os

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from hdme.cli import app
from hdme.conventions import load_sigma_map
from hdme.images import read_image
from hdme.train.synth import laplacian_variance
from synth_reference import gather_render, scatter_render

runner = CliRunner()
MARGIN = 8


def _make(out, *extra):
    result = runner.invoke(app, ["data", "make", str(out), "--count", "10", "--size", "64", "--seed", "3", *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "set"
    return out, _make(out, "--save-sharp", "--noise", "none", "--recipe", "paper")


def test_layout_manifest_and_sixteen_bit_maps(dataset):
    out, manifest = dataset
    assert manifest["splits"] == {"train": 8, "val": 1, "test": 1}
    assert manifest["seed"] == 3 and manifest["args"]["count"] == 10 and manifest["recipe"]["name"] == "paper"
    assert len(manifest["samples"]) == 10
    for s in manifest["samples"]:
        assert s["kind"] in ("patch", "gaussian", "segment")
        assert s["laplacian_after"] > 1000 and s["laplacian_after"] > s["laplacian_before"]
        for part in ("image", "defocus", "sharp"):
            assert (out / s["split"] / part / f"{s['name']}.png").is_file()
        raw = cv2.imread(str(out / s["split"] / "defocus" / f"{s['name']}.png"), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (64, 64)
        assert abs(raw.max() / 1000.0 - s["sigma_max"]) < 2e-3
    assert not list(out.rglob("*.tmp*"))
    assert not (out / ".samples").exists()  # per-sample records are folded into the manifest


def test_images_are_the_eq4_scatter_of_the_sharp_images(dataset):
    """Re-render `sharp` with the stored map through an independent brute-force Eq. 4."""
    out, manifest = dataset
    for s in manifest["samples"][:3]:
        folder = out / s["split"]
        sharp = read_image(folder / "sharp" / f"{s['name']}.png").astype(np.float64) / 255.0
        image = read_image(folder / "image" / f"{s['name']}.png").astype(np.float64) / 255.0
        sigma = load_sigma_map(folder / "defocus" / f"{s['name']}.png")
        assert laplacian_variance(read_image(folder / "sharp" / f"{s['name']}.png")) > 1000
        psnr = {}
        for name, render in (("scatter", scatter_render), ("gather", gather_render)):
            err = (render(sharp, sigma.astype(np.float64), pad=40) - image)[MARGIN:-MARGIN, MARGIN:-MARGIN]
            psnr[name] = 10 * np.log10(1.0 / np.mean(err**2))
        assert psnr["scatter"] >= 36.0, (s, psnr)
        # the check tells the two apart: a gather render of the same map does clearly worse
        assert psnr["gather"] < psnr["scatter"] - 3.0, (s, psnr)


def test_rerun_resumes_and_refuses_other_arguments(dataset, tmp_path):
    out, manifest = dataset
    victim = manifest["samples"][0]
    keep = manifest["samples"][1]
    keep_path = out / keep["split"] / "image" / f"{keep['name']}.png"
    stamp = os.stat(keep_path).st_mtime_ns
    (out / victim["split"] / "image" / f"{victim['name']}.png").unlink()
    # a half-written temp file from a killed run is ignored
    (out / victim["split"] / "image" / f".{victim['name']}.abc.tmp.png").write_bytes(b"partial")
    again = _make(out, "--save-sharp", "--noise", "none", "--recipe", "paper")
    assert again["resumed_samples"] == 9
    assert os.stat(keep_path).st_mtime_ns == stamp
    assert again["samples"] == manifest["samples"]  # the redone sample is the same sample
    result = runner.invoke(app, ["data", "make", str(out), "--count", "10", "--size", "48", "--seed", "3"])
    assert result.exit_code != 0 and "other arguments" in str(result.exception)


def test_folder_sources_skip_corrupt_and_small_files_and_sharpness_table(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(photos / f"p{i}.png"), rng.integers(0, 256, (80, 90, 3), dtype=np.uint8))
    cv2.imwrite(str(photos / "tiny.png"), np.zeros((20, 20, 3), np.uint8))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "set"
    manifest = _make(out, "--source", str(photos), "--workers", "2", "--recipe", "hdme")
    assert manifest["skipped_sources"]["corrupt"] == 1 and manifest["skipped_sources"]["too_small"] == 1
    result = runner.invoke(app, ["data", "sharpness", str(out)])
    assert result.exit_code == 0 and "after shuffle" in result.output and "before shuffle" in result.output


def test_an_interrupted_run_resumes_from_its_sample_records(tmp_path, monkeypatch):
    from hdme.train import make

    real = make._make_sample
    calls = []

    def dies_after_four(task):
        if len(calls) == 4:
            raise KeyboardInterrupt  # as if killed mid-run
        calls.append(task)
        return real(task)

    args = dict(out=str(tmp_path / "set"), count=6, size=32, seed=1, flat=True)
    monkeypatch.setattr(make, "_make_sample", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        make.make_dataset(make.MakeArgs(**args), progress=False)
    assert not (tmp_path / "set" / "manifest.json").exists()
    monkeypatch.setattr(make, "_make_sample", real)
    manifest = make.make_dataset(make.MakeArgs(**args), progress=False)
    assert manifest["resumed_samples"] == 4 and manifest["splits"] == {"all": 6}
    assert sorted(p.name for p in (tmp_path / "set").glob("*.png")) == [f"{i:06d}.png" for i in range(6)]


def test_a_killed_runs_empty_temp_file_is_removed_on_resume(tmp_path):
    from hdme.export.calibration import CalibrationSet
    from hdme.train import make

    args = dict(out=str(tmp_path / "set"), count=4, size=32, seed=1, flat=True)
    make.make_dataset(make.MakeArgs(**args), progress=False)
    # kill -9 between the temp file's creation and its rename: a 0-byte temp file, no rename
    (tmp_path / "set" / "000002.png").unlink()
    (tmp_path / "set" / ".000002.x7_k2m9q.tmp.png").write_bytes(b"")
    manifest = make.make_dataset(make.MakeArgs(**args), progress=False)
    assert manifest["resumed_samples"] == 3
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [f"{i:06d}.png" for i in range(4)] + ["manifest.json"]
    calib = CalibrationSet(tmp_path / "set")
    assert len(calib) == 4 and all(calib.load(i).shape == (3, 256, 256) for i in range(4))


def test_away_recipe_writes_its_scenes_and_takes_no_overrides(tmp_path):
    result = runner.invoke(app, ["data", "make", str(tmp_path / "leaves"), "--count", "2", "--size", "48", "--recipe", "away-leaves", "--workers", "2"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((tmp_path / "leaves" / "manifest.json").read_text())
    assert manifest["recipe"]["kind"] == "away" and manifest["recipe"]["psf"] == {"hexagon": 0.5, "ring": 0.5}
    for s in manifest["samples"]:
        assert s["kind"] == "leaves" and s["psf"] in ("hexagon", "ring")
        sigma = load_sigma_map(tmp_path / "leaves" / s["split"] / "defocus" / f"{s['name']}.png")
        assert sigma.min() < 2.0 and sigma.max() > 8.0  # σ spans the range in every image
    result = runner.invoke(app, ["data", "make", str(tmp_path / "x"), "--count", "2", "--recipe", "away-dof", "--noise", "none"])
    assert result.exit_code != 0 and "do not apply" in str(result.exception)
