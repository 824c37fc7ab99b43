import cv2
import numpy as np
import pytest
import torch

from hdme.train.synth import laplacian_variance, shuffle_pixels
from hdme.train.synth.sharpness import SHARP_THRESHOLD


def _triplets(img: torch.Tensor) -> list[tuple]:
    return sorted(map(tuple, img.reshape(3, -1).T.tolist()))


@pytest.mark.parametrize("mode", ["full", "rowcol"])
def test_shuffle_keeps_the_multiset_of_rgb_triplets(mode):
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (3, 3, 17, 23), generator=gen).float()
    out = shuffle_pixels(batch, mode, gen)
    assert out.shape == batch.shape
    assert not torch.equal(out, batch)
    for a, b in zip(batch, out):
        assert _triplets(a) == _triplets(b)
    single = shuffle_pixels(batch[0], mode, gen)
    assert single.shape == batch[0].shape and _triplets(single) == _triplets(batch[0])


def test_rowcol_keeps_rows_as_units():
    img = torch.arange(3 * 6 * 8, dtype=torch.float32).reshape(3, 6, 8)
    out = shuffle_pixels(img, "rowcol", torch.Generator().manual_seed(1))
    # Every output row is some input row with its columns permuted the same way.
    rows_in = sorted(tuple(sorted(img[0, i].tolist())) for i in range(6))
    rows_out = sorted(tuple(sorted(out[0, i].tolist())) for i in range(6))
    assert rows_in == rows_out


def test_shuffle_is_seeded_and_rejects_unknown_modes():
    img = torch.rand(2, 3, 9, 9)
    a = shuffle_pixels(img, "full", torch.Generator().manual_seed(5))
    b = shuffle_pixels(img, "full", torch.Generator().manual_seed(5))
    c = shuffle_pixels(img, "full", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        shuffle_pixels(img, "columns")


def test_laplacian_variance_matches_opencv(rng):
    for blur in (0.0, 1.5, 4.0):
        img = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
        if blur:
            img = cv2.GaussianBlur(img, (0, 0), blur)
        expected = cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
        assert laplacian_variance(img) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        as_tensor = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
        assert laplacian_variance(as_tensor) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    batch = laplacian_variance(torch.rand(4, 3, 16, 16))
    assert batch.shape == (4,)


def test_shuffling_makes_a_smooth_image_sharp():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    smooth = torch.stack([yy, xx, (yy + xx) / 2])
    before = laplacian_variance(smooth)
    after = laplacian_variance(shuffle_pixels(smooth, generator=torch.Generator().manual_seed(0)))
    assert before < 10 and after > SHARP_THRESHOLD
