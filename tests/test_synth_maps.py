import numpy as np
import pytest
import torch

from hdme.train.synth.maps import MAP_KINDS, SigmaDistribution, make_map, patch_map, segment_map, superpixel_labels
from hdme.train.synth.scenes import draw_scene
from hdme.train.synth.sources import ImageListSource


def _source_image(size: int) -> torch.Tensor:
    # Four flat quadrants: segments must follow them.
    img = torch.zeros(3, size, size)
    img[0, : size // 2] = 1.0
    img[1, :, : size // 2] = 1.0
    return img


@pytest.mark.parametrize("kind", MAP_KINDS)
@pytest.mark.parametrize("dist", [SigmaDistribution(), SigmaDistribution("favour_small", max=6.0)])
def test_maps_are_in_range_and_seeded(kind, dist):
    size = 64
    maps = [make_map(kind, size, np.random.default_rng(seed), dist, source=_source_image(size)) for seed in (3, 3, 4)]
    for m in maps:
        assert m.shape == (size, size) and m.dtype == torch.float32
        assert float(m.min()) >= 0.0 and float(m.max()) <= dist.max
    assert torch.equal(maps[0], maps[1])
    assert not torch.equal(maps[0], maps[2])


def test_patch_map_has_sixteen_regions_split_away_from_the_border():
    m = patch_map(256, np.random.default_rng(0), SigmaDistribution())
    assert len(torch.unique(m)) == 16
    # The first split lies ≥50 px from the border: the 50-px frame crosses no first-level split,
    # so the top-left 50×50 corner holds at most the 4 sub-regions of one quadrant.
    assert len(torch.unique(m[:50, :50])) <= 4
    small = patch_map(48, np.random.default_rng(0), SigmaDistribution())
    assert 1 < len(torch.unique(small)) <= 16


def test_segments_follow_the_source_and_carry_one_sigma_each():
    img = _source_image(64)
    labels = superpixel_labels(img, np.random.default_rng(0), regions=(8, 8))
    # No segment straddles the quadrant edges of a four-colour image.
    quadrant = torch.zeros(64, 64, dtype=torch.long)
    quadrant[:32, 32:] = 1
    quadrant[32:, :32] = 2
    quadrant[32:, 32:] = 3
    for lab in torch.unique(labels):
        assert len(torch.unique(quadrant[labels == lab])) == 1
    sigma = segment_map(labels, np.random.default_rng(1), SigmaDistribution())
    for lab in torch.unique(labels):
        assert len(torch.unique(sigma[labels == lab])) == 1


def test_favour_small_puts_most_sigma_below_four_px():
    rng = np.random.default_rng(0)
    small = SigmaDistribution("favour_small").sample(rng, 20000)
    uniform = SigmaDistribution().sample(rng, 20000)
    assert small.max() <= 10 and small.min() >= 0 and small.max() > 9
    assert np.mean(small < 4) > 0.7 and abs(np.mean(uniform < 4) - 0.4) < 0.02
    with pytest.raises(ValueError):
        SigmaDistribution("lognormal")


def test_scenes_are_sharp_with_flat_regions_and_object_aligned_sigma():
    source = ImageListSource([np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)])
    flat_shares = []
    for seed in range(6):
        rgb, sigma = draw_scene(64, np.random.default_rng(seed), source, SigmaDistribution())
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        assert sigma.shape == (64, 64) and sigma.min() >= 0 and sigma.max() <= 10
        # thin lens with the focus inside the depth range: something is (nearly) in focus
        assert sigma.min() < 0.5 * sigma.max()
        grad = np.abs(np.diff(rgb.astype(int), axis=1)).sum(axis=2)
        flat_shares.append(np.mean(grad == 0))
    assert max(flat_shares) > 0.2
    again = draw_scene(64, np.random.default_rng(5), source, SigmaDistribution())
    assert np.array_equal(again[0], rgb) and np.array_equal(again[1], sigma)


def test_fine_scenes_pack_more_occlusion_edges():
    source = ImageListSource([np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)])

    def boundary_share(fine: bool) -> float:
        # σ jumps where one object occludes another: the share of such pixels counts the edges
        shares = []
        for seed in range(8):
            _, sigma = draw_scene(96, np.random.default_rng(seed), source, SigmaDistribution(), fine)
            shares.append(np.mean(np.abs(np.diff(sigma, axis=1)) > 0.05))
        return float(np.mean(shares))

    assert boundary_share(True) > 1.25 * boundary_share(False)


def test_field_scenes_grow_sigma_gradually_up_to_their_maximum():
    source = ImageListSource([np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)])
    prior = SigmaDistribution("favour_small", max=10.0, small_max=3.0, small_prob=0.7)
    middle = []
    for seed in range(8):
        rgb, sigma = draw_scene(96, np.random.default_rng(seed), source, prior, field_sigma_max=(3.0, 10.0))
        assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
        # the largest σ comes from the field range, not from the prior's mostly small draws
        assert 3.0 - 1e-4 <= sigma.max() <= 10.0 and sigma.min() < 0.1
        # gradual: steps over 0.5 px between neighbours only on the outlines of the few shapes
        assert np.mean(np.abs(np.diff(sigma, axis=1)) > 0.5) < 0.05
        middle.append(np.mean((sigma > 0.25 * sigma.max()) & (sigma < 0.75 * sigma.max())))
    assert np.mean(middle) > 0.4  # the frame passes through the intermediate blur, not only its ends
    again = draw_scene(96, np.random.default_rng(7), source, prior, field_sigma_max=(3.0, 10.0))
    assert np.array_equal(again[1], sigma)


def test_dense_field_scenes_cover_the_field_with_more_outlines():
    source = ImageListSource([np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)])
    prior = SigmaDistribution("favour_small", max=10.0, small_max=3.0, small_prob=0.7)

    def outline_share(dense: bool) -> float:
        shares = []
        for seed in range(8):
            _, sigma = draw_scene(96, np.random.default_rng(seed), source, prior, fine=dense, field_sigma_max=(3.0, 10.0))
            assert 3.0 - 1e-4 <= sigma.max() <= 10.0  # still a field scene reaching its drawn maximum
            shares.append(np.mean(np.abs(np.diff(sigma, axis=1)) > 0.5))
        return float(np.mean(shares))

    assert outline_share(True) > 2.0 * outline_share(False)
