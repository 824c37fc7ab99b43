import json

import numpy as np
import pytest
import torch

from hdme.errors import HdmeError
from hdme.train.synth import RECIPES, SyntheticStream, get_recipe
from hdme.train.synth.recipe import CONFIG_DIR
from hdme.train.synth.sources import ImageListSource, as_source, bundled_images


@pytest.fixture(scope="module")
def source():
    return as_source(bundled_images()[:4])


def test_bundled_images_are_rgb_photos():
    images = bundled_images()
    assert len(images) >= 10
    for img in images:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 128


@pytest.mark.parametrize("name", ["paper", "hdme", "hdme-range"])
def test_stream_batches_are_well_formed_and_seeded(name, source):
    recipe = get_recipe(name)
    a = SyntheticStream(recipe, 48, 4, seed=7, sources=source)
    image, sigma = a.next_batch()
    assert image.shape == (4, 3, 48, 48) and sigma.shape == (4, 1, 48, 48)
    assert image.dtype == torch.float32 and sigma.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert 0.0 <= float(sigma.min()) and float(sigma.max()) <= 10.0 + 1e-4
    again = SyntheticStream(recipe, 48, 4, seed=7, sources=source).next_batch()
    assert torch.equal(again[0], image) and torch.equal(again[1], sigma)
    other = SyntheticStream(recipe, 48, 4, seed=8, sources=source).next_batch()
    assert not torch.equal(other[1], sigma)
    nxt = a.next_batch()
    assert not torch.equal(nxt[1], sigma)


def test_hdme_recipe_mixes_scenes_with_a_camera_sigma_floor(source):
    recipe = get_recipe("hdme")
    batch = SyntheticStream(recipe, 32, 24, seed=0, sources=source).generate()
    assert "scene" in batch.kinds and any(k != "scene" for k in batch.kinds)
    assert set(batch.psf) <= {"gaussian", "disc", "mixture"} and len(set(batch.psf)) > 1
    assert float(batch.sigma.min()) >= recipe.camera_sigma[0] - 1e-5 > 0  # no real pixel is σ = 0
    # shuffled samples are permutations of their source, scenes are drawn sharp as they are
    for i, kind in enumerate(batch.kinds):
        same = torch.equal(batch.sharp[i], batch.source[i])
        assert same == (kind == "scene")


def test_recipe_files_match_the_presets_and_bad_recipes_are_one_line_errors(tmp_path):
    for name, recipe in RECIPES.items():
        data = json.loads((CONFIG_DIR / f"{name}.json").read_text())
        assert get_recipe(str(CONFIG_DIR / f"{name}.json")) == recipe
        assert data["data"]["name"] == name
    paper = get_recipe("paper")
    assert paper.scene_fraction == 0 and paper.psf == {"gaussian": 1.0} and paper.camera_sigma is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": {"maps": {"stars": 1.0}}}))
    with pytest.raises(HdmeError, match="maps"):
        get_recipe(str(bad))
    bad.write_text(json.dumps({"data": {"blur": 3}}))
    with pytest.raises(HdmeError, match="unknown recipe keys"):
        get_recipe(str(bad))
    with pytest.raises(HdmeError):
        get_recipe("no-such-recipe")
    for value in ([5.0, 3.0], [0.0, 4.0], [3.0, 12.0], [3.0]):  # hi < lo, no blur, past the σ maximum, not a pair
        bad.write_text(json.dumps({"data": {"field_scene_fraction": 0.2, "field_sigma_max": value}}))
        with pytest.raises(HdmeError, match="field_sigma_max must be"):
            get_recipe(str(bad))
    field = get_recipe("hdme-field")
    assert field.replace(name="hdme-broad", field_scene_fraction=0.0) == get_recipe("hdme-broad")
    # Training and away recipes share one check of each field they have in common.
    for kind in ({}, {"kind": "away", "scene": "leaves"}):
        for field, value in (("jpeg_quality", [90, 40]), ("jpeg_quality", [0, 50]), ("jpeg_quality", [40.5, 90]),
                             ("psf", {"gaussian": -1.0}), ("psf", {"star": 1.0})):
            bad.write_text(json.dumps({"data": {**kind, field: value}}))
            with pytest.raises(HdmeError, match=f"recipe 'bad'.*{field} must"):
                get_recipe(str(bad))


def test_sources_crop_to_size_and_skip_bad_files(tmp_path):
    import cv2

    crop = ImageListSource([np.zeros((40, 60, 3), np.uint8)]).sample(np.random.default_rng(0), 32)
    assert crop.shape == (32, 32, 3)
    cv2.imwrite(str(tmp_path / "big.png"), np.full((50, 50, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "small.png"), np.full((10, 10, 3), 10, np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    folder = as_source(str(tmp_path))
    with pytest.warns(UserWarning):
        crops = [folder.sample(np.random.default_rng(s), 32) for s in range(20)]
    assert all(c.shape == (32, 32, 3) and c.mean() == 200 for c in crops)
    assert len(folder.corrupt_paths) == 1 and len(folder.small_paths) == 1


def test_cached_sets_are_keyed_by_the_synthesis_code_and_the_libraries_that_render_them(tmp_path, monkeypatch):
    from hdme.train.synth import sets

    monkeypatch.setenv(sets.CACHE_ENV, str(tmp_path))
    recipe = get_recipe("hdme")
    before = sets._cache_file(recipe, 32, 1)
    assert before == sets._cache_file(recipe, 32, 1)
    monkeypatch.setattr(sets, "synthesis_digest", lambda: "changed-code")
    assert sets._cache_file(recipe, 32, 1) != before  # a set rendered by other code is not reused
    changed = sets._cache_file(recipe, 32, 1)
    other_opencv = {**sets.rendering_libraries(), "opencv": "0.0"}
    monkeypatch.setattr(sets, "rendering_libraries", lambda: other_opencv)
    assert sets._cache_file(recipe, 32, 1) != changed  # nor one another OpenCV drew


def test_linear_light_samples_blur_light_and_then_encode_it(source):
    from hdme.train.synth.noise import draw_noise
    from hdme.train.synth.render import linear_to_srgb, srgb_to_linear
    from hdme.train.synth.stream import SynthDraw, draw_batch, render_clean

    values = torch.linspace(0, 1, 101)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-6)
    # a black/white step edge, blurred once in sRGB values and once in linear light
    edge = torch.zeros(2, 64, 64, 3, dtype=torch.uint8)
    edge[:, :, 32:] = 255
    recipe = get_recipe("hdme-field-linear").replace(camera_sigma=None)
    draw = SynthDraw(edge, torch.full((2, 64, 64), 4.0), ["scene", "scene"], ["gaussian", "gaussian"], None,
                     draw_noise(2, "camera", np.random.default_rng(0), 0.0, 0.0, 0.0, (90, 95)),
                     torch.tensor([False, True]))
    batch = render_clean(recipe, draw, torch.Generator().manual_seed(0))
    plain, light = batch.image[0, 0, 32], batch.image[1, 0, 32]
    # at the edge half the light arrives: sRGB 0.5 when blurred in sRGB, 0.735 when blurred as light
    assert abs(float(plain[31:33].mean()) - 0.5) < 0.02 and abs(float(light[31:33].mean()) - 0.735) < 0.02
    assert torch.equal(batch.sharp, batch.source)  # the sharp image stays as the scene was drawn
    # the recipe draws linear light for about its share of samples, and older recipes draw none
    share = float(draw_batch(recipe, 32, 64, np.random.default_rng(3), as_source(source)).linear.float().mean())
    assert 0.3 < share < 0.7
    assert draw_batch(get_recipe("hdme"), 32, 4, np.random.default_rng(3), as_source(source)).linear is None
    bad = recipe.to_dict() | {"linear_light_probability": 1.5}
    with pytest.raises(HdmeError, match="linear_light_probability must be within"):
        get_recipe("hdme").replace(**{k: v for k, v in bad.items() if k != "name"})


def test_a_recipe_may_label_blur_past_the_networks_range(source, tmp_path):
    from hdme.conventions import SIGMA_MAX
    from hdme.train.synth.noise import draw_noise
    from hdme.train.synth.stream import SynthDraw, render_clean

    recipe = get_recipe("hdme-field-beyond")
    assert recipe.sigma_distribution().max > SIGMA_MAX
    batch = SyntheticStream(recipe.replace(scene_fraction=1.0, field_scene_fraction=1.0), 64, 6, seed=3,
                            sources=source).generate()
    assert float(batch.sigma.max()) > SIGMA_MAX + 0.5
    # a step edge blurred with σ = 13 px spreads further than one clipped to 10 px would
    edge = torch.zeros(2, 96, 96, 3, dtype=torch.uint8)
    edge[:, :, 48:] = 255
    draw = SynthDraw(edge, torch.tensor([10.0, 13.0])[:, None, None].expand(2, 96, 96).contiguous(), ["scene"] * 2,
                     ["gaussian"] * 2, None, draw_noise(2, "camera", np.random.default_rng(0), 0.0, 0.0, 0.0, (90, 95)), None)
    rendered = render_clean(recipe.replace(camera_sigma=None), draw, torch.Generator().manual_seed(0))
    row10, row13 = rendered.image[0, 0, 48], rendered.image[1, 0, 48]
    assert float(row13[48 - 20]) > float(row10[48 - 20]) + 0.01  # 20 px before the edge: 1.5 σ against 2 σ
    assert float(rendered.sigma.max()) == pytest.approx(13.0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": {"sigma": {"kind": "uniform", "max": 20.0}}}))
    with pytest.raises(HdmeError, match="sigma: σ distribution out of range"):
        get_recipe(str(bad))


def _rendered_with_and_without(plain, changed, count, source):
    """One seed's draws and clean renders under two recipes that differ only in what ``draw_batch``
    draws last: the scenes, σ maps, PSFs and noise must stay as they were."""
    from hdme.train.synth.stream import draw_batch, render_clean

    draws = [draw_batch(r, 64, count, np.random.default_rng(5), as_source(source)) for r in (plain, changed)]
    assert torch.equal(draws[0].source, draws[1].source) and torch.equal(draws[0].sigma, draws[1].sigma)
    renders = [render_clean(r, d, torch.Generator().manual_seed(0)) for r, d in zip((plain, changed), draws)]
    return draws, renders


def test_low_contrast_samples_flatten_the_sharp_image_and_keep_everything_else(source, tmp_path):
    from hdme.train.synth.stream import draw_batch

    recipe = get_recipe("hdme-field-contrast")
    assert recipe.low_contrast_probability > 0 and get_recipe("hdme-field-past10").low_contrast_probability == 0
    plain = recipe.replace(low_contrast_probability=0.0)
    flat = plain.replace(low_contrast_probability=1.0, contrast_range=[0.25, 0.25])
    draws, (a, b) = _rendered_with_and_without(plain, flat, 6, source)
    assert draws[0].contrast is None and torch.allclose(draws[1].contrast, torch.full((6,), 0.25))
    assert torch.equal(a.sigma, b.sigma)
    mean = a.sharp.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(b.sharp, mean + 0.25 * (a.sharp - mean), atol=1e-6)
    # about the recipe's share of samples is flattened, log-uniformly within its range
    factors = draw_batch(recipe, 32, 200, np.random.default_rng(3), as_source(source)).contrast
    assert 0.3 < float((factors < 1).float().mean()) < 0.5 and float(factors.min()) >= 0.2
    bad = tmp_path / "bad.json"
    for value in ([0.5, 0.2], [0.0, 1.0], [0.5, 1.5]):
        bad.write_text(json.dumps({"data": {"low_contrast_probability": 0.5, "contrast_range": value}}))
        with pytest.raises(HdmeError, match="contrast_range must be"):
            get_recipe(str(bad))
    # an away set at a given contrast: the same scenes, flatter
    from hdme.train.synth.away import AWAY_RECIPES

    leaves = AWAY_RECIPES["away-leaves"]
    sets = [SyntheticStream(leaves.replace(contrast=c), 64, 2, seed=4, sources=source).generate() for c in (1.0, 0.5)]
    assert torch.equal(sets[0].sigma, sets[1].sigma)
    assert torch.allclose(sets[1].sharp.std(dim=(1, 2, 3)), 0.5 * sets[0].sharp.std(dim=(1, 2, 3)), rtol=1e-4)
    with pytest.raises(HdmeError, match="contrast must be within"):
        leaves.replace(contrast=0.0)


def test_zoomed_samples_are_enlarged_with_their_labels_before_the_noise(source, tmp_path):
    recipe = get_recipe("hdme-field-zoom")
    assert recipe.zoom_probability > 0 and get_recipe("hdme-field-jpeg").zoom_probability == 0
    plain = recipe.replace(zoom_probability=0.0)
    zoomed = plain.replace(zoom_probability=1.0, zoom_range=[2.0, 2.0])
    draws, (a, b) = _rendered_with_and_without(plain, zoomed, 8, source)
    assert draws[0].zoom is None
    factor = draws[1].zoom
    # every sample goes as far toward 2× as keeps its labels within the σ maximum
    top = a.sigma.amax(dim=(1, 2, 3))
    assert torch.allclose(factor, torch.clamp(10.0 / top, 1.0, 2.0), rtol=1e-3) and bool((factor > 1).any())
    assert float(b.sigma.max()) <= 10.0 + 1e-3
    for i in range(8):
        if factor[i] == 1:
            assert torch.equal(a.image[i], b.image[i]) and torch.equal(a.sigma[i], b.sigma[i])
        else:  # a window of the rendered sample, its labels times the factor
            assert float(b.sigma[i].min()) >= float(factor[i] * a.sigma[i].min()) - 1e-3
            assert float(b.sigma[i].max()) <= float(factor[i] * a.sigma[i].max()) + 1e-3
            assert not torch.equal(a.image[i], b.image[i]) and 0 <= float(b.image[i].min()) and float(b.image[i].max()) <= 1
    bad = tmp_path / "bad.json"
    for value in ([2.0, 1.5], [0.5, 2.0], [1.0, 5.0]):
        bad.write_text(json.dumps({"data": {"zoom_probability": 0.5, "zoom_range": value}}))
        with pytest.raises(HdmeError, match="zoom_range must be"):
            get_recipe(str(bad))


def test_zoomed_samples_can_take_the_camera_blur_after_the_enlargement(source):
    import dataclasses

    from hdme.train.synth.render import camera_blur
    from hdme.train.synth.stream import draw_batch, render_clean

    recipe = get_recipe("hdme-field-zoom-sensor").replace(zoom_probability=0.5, zoom_range=[2.0, 2.0])
    assert recipe.zoom_camera_blur_after and not get_recipe("hdme-field-zoom").zoom_camera_blur_after
    draw = draw_batch(recipe, 64, 12, np.random.default_rng(2), as_source(source))
    cam = draw.camera_sigma
    # only the lens blur is enlarged, so it alone must fit within the σ maximum with the camera's
    lens_top = draw.sigma.amax(dim=(1, 2))
    room = ((100.0 - cam.square()).sqrt() / lens_top).clamp(1.0, 2.0)
    zoomed = draw.zoom > 1
    assert 0 < int(zoomed.sum()) < 12 and torch.allclose(draw.zoom[zoomed], room[zoomed], rtol=1e-4)
    after = render_clean(recipe, draw, torch.Generator().manual_seed(0))
    lens_only = render_clean(recipe, dataclasses.replace(draw, camera_sigma=None), torch.Generator().manual_seed(0))
    # a zoomed sample: the enlarged lens-only render, then the camera's blur at the sensor's scale
    expected = camera_blur(lens_only.image[zoomed], cam[zoomed])
    assert torch.allclose(after.image[zoomed], expected, atol=1e-5)
    expected_sigma = (lens_only.sigma[zoomed].square() + cam[zoomed, None, None, None].square()).sqrt()
    assert torch.allclose(after.sigma[zoomed], expected_sigma, atol=1e-5)
    assert float(after.sigma.max()) <= 10.0 + 1e-3
    # the others as in `hdme-field-zoom`, whose draw they share
    before = render_clean(recipe.replace(zoom_camera_blur_after=False), draw, torch.Generator().manual_seed(0))
    assert torch.equal(after.image[~zoomed], before.image[~zoomed]) and torch.equal(after.sigma[~zoomed], before.sigma[~zoomed])
    # against the enlarged floor of `hdme-field-zoom`, the flat parts of a zoomed frame read sharper
    assert float(after.sigma[zoomed].amin(dim=(1, 2, 3)).mean()) < float(before.sigma[zoomed].amin(dim=(1, 2, 3)).mean())


def test_zoomed_labels_can_take_in_the_blur_of_the_enlargement(source):
    from hdme.train.synth.render import enlargement_blur
    from hdme.train.synth.stream import draw_batch, render_clean

    factors = torch.tensor([1.0, 1.25, 1.6, 2.0, 2.5])
    added = enlargement_blur(factors)
    assert added[0] == 0 and bool((added.diff() > 0).all()) and 0.4 < float(added[1]) < 0.7 and 1.0 < float(added[-1]) < 1.5

    recipe = get_recipe("hdme-field-zoom-soft").replace(zoom_probability=0.5, zoom_range=[2.0, 2.0])
    assert recipe.zoom_blur_labelled and not get_recipe("hdme-field-zoom-sensor").zoom_blur_labelled
    draw = draw_batch(recipe, 64, 12, np.random.default_rng(2), as_source(source))
    zoomed = draw.zoom > 1
    labelled = render_clean(recipe, draw, torch.Generator().manual_seed(0))
    plain = render_clean(recipe.replace(zoom_blur_labelled=False), draw, torch.Generator().manual_seed(0))
    assert torch.equal(labelled.image, plain.image) and torch.equal(labelled.sigma[~zoomed], plain.sigma[~zoomed])
    extra = enlargement_blur(draw.zoom[zoomed])[:, None, None, None]
    expected = (plain.sigma[zoomed].square() + extra.square()).sqrt().clamp(max=10.0)
    assert torch.allclose(labelled.sigma[zoomed], expected, atol=1e-5) and float(labelled.sigma.max()) <= 10.0
