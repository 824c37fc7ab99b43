import numpy as np
import pytest
import torch

from hdme.train.synth.noise import CAMERA, bayer_demosaic, draw_noise, jpeg, noise_batch
from hdme.train.synth.sources import bundled_images, random_crop
from synth_reference import opencv_jpeg


def _flat(value: float, size: int = 64, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 3, size, size), value)


def test_none_leaves_the_batch_alone(rng):
    batch = torch.rand(3, 3, 16, 16)
    assert torch.equal(noise_batch(batch, draw_noise(3, "none", rng)), batch)
    with pytest.raises(ValueError):
        draw_noise(3, "film", rng)


def test_paper_noise_hits_the_requested_fraction_of_samples():
    batch = torch.full((200, 3, 8, 8), 0.5)
    out = noise_batch(batch, draw_noise(200, "paper", np.random.default_rng(0), probability=0.1),
                      torch.Generator().manual_seed(0))
    changed = (out != batch).flatten(1).any(dim=1).float().mean().item()
    assert 0.04 < changed < 0.18


def test_each_paper_noise_kind_keeps_the_mean_and_adds_spread():
    draw = draw_noise(12, "paper", np.random.default_rng(0))
    assert set(draw.kind.tolist()) == {1, 2, 3}  # salt-and-pepper, Poisson and Gaussian all drawn
    outs = noise_batch(_flat(0.5, batch=12), draw, torch.Generator().manual_seed(0))
    for out in outs:
        assert not torch.equal(out, _flat(0.5)[0])
        assert abs(out.mean().item() - 0.5) < 0.02
    # salt and pepper shows up as exact 0 and 1 pixels in some of them
    assert any(((o == 0) | (o == 1)).any() for o in outs)


def test_camera_noise_is_signal_dependent_shot_noise():
    draw = draw_noise(2, "camera", np.random.default_rng(1), bayer_probability=0.0)
    # the same gain and read noise for both samples: variance then grows with the signal (Poisson)
    for values in (draw.strength, draw.read):
        values[1] = values[0]
    assert (draw.kind == CAMERA).all() and not draw.bayer.any()
    dark, bright = noise_batch(torch.cat([_flat(0.1, 96), _flat(0.8, 96)]), draw, torch.Generator().manual_seed(0))
    assert abs(dark.mean().item() - 0.1) < 0.01 and abs(bright.mean().item() - 0.8) < 0.01
    assert bright.var().item() > 3 * dark.var().item()


def test_demosaic_and_jpeg_keep_flat_colours_and_soften_detail(rng):
    grey = _flat(0.4)[0]
    assert torch.allclose(bayer_demosaic(grey), grey, atol=1e-6)
    noise = torch.from_numpy(rng.random((3, 32, 32)).astype(np.float32))
    assert bayer_demosaic(noise).std() < noise.std()
    assert torch.equal(bayer_demosaic(noise[None])[0], bayer_demosaic(noise))
    compressed = jpeg(noise, 60)
    assert compressed.shape == noise.shape and not torch.equal(compressed, noise)
    assert (compressed - noise).abs().mean() < 0.25
    assert torch.allclose(jpeg(grey, 90), grey, atol=2 / 255)


@pytest.mark.parametrize("quality", [60, 80, 95])
def test_torch_jpeg_matches_the_opencv_codec(quality):
    rng = np.random.default_rng(quality)
    photos = bundled_images()
    crops = [random_crop(photos[i], 40 + 8 * i, rng) for i in range(0, 12, 3)]  # sizes off the 16-px grid too
    for crop in crops:
        ref = opencv_jpeg(crop, quality).astype(np.float64)
        out = jpeg(torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0, quality).permute(1, 2, 0).numpy() * 255.0
        codec_error = np.abs(ref - crop).mean()
        # the model lands on the codec's output closer than the codec lands on its input (the
        # integer DCT and colour tables of libjpeg account for the ±1 grey-level rest)
        assert np.abs(out - ref).mean() < 0.5 * codec_error + 0.25
        assert np.abs(out - crop).mean() == pytest.approx(codec_error, rel=0.1, abs=0.05)


def test_jpeg_quality_is_per_sample(rng):
    photos = torch.from_numpy(np.stack([random_crop(bundled_images()[0], 32, rng) for _ in range(2)])).permute(0, 3, 1, 2) / 255.0
    both = jpeg(photos, torch.tensor([60, 95]))
    assert torch.equal(both[0], jpeg(photos[0], 60)) and torch.equal(both[1], jpeg(photos[1], 95))


def test_jpeg_probability_is_honoured():
    batch = torch.rand(100, 3, 16, 16)
    out = noise_batch(batch, draw_noise(100, "none", np.random.default_rng(0), jpeg_probability=0.4))
    share = (out != batch).flatten(1).any(dim=1).float().mean().item()
    assert 0.25 < share < 0.55


def test_jpeg_quality_range_is_honoured():
    draw = draw_noise(200, "none", np.random.default_rng(0), jpeg_probability=1.0, jpeg_quality=(40, 45))
    assert draw.jpeg_quality.min() == 40 and draw.jpeg_quality.max() == 45
