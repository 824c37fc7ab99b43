import numpy as np
import pytest
import torch

from hdme.train.synth.noise import apply_noise, bayer_demosaic, camera_noise, jpeg, paper_noise


def _flat(value: float, size: int = 64) -> torch.Tensor:
    return torch.full((3, size, size), value)


def test_none_leaves_the_batch_alone(rng):
    batch = torch.rand(3, 3, 16, 16)
    assert torch.equal(apply_noise(batch, "none", rng), batch)
    with pytest.raises(ValueError):
        apply_noise(batch, "film", rng)


def test_paper_noise_hits_the_requested_fraction_of_samples():
    batch = torch.full((200, 3, 8, 8), 0.5)
    out = apply_noise(batch, "paper", np.random.default_rng(0), torch.Generator().manual_seed(0), probability=0.1)
    changed = (out != batch).flatten(1).any(dim=1).float().mean().item()
    assert 0.04 < changed < 0.18


def test_each_paper_noise_kind_keeps_the_mean_and_adds_spread():
    gen = torch.Generator().manual_seed(0)
    outs = [paper_noise(_flat(0.5), np.random.default_rng(seed), gen) for seed in range(12)]
    for out in outs:
        assert not torch.equal(out, _flat(0.5))
        assert abs(out.mean().item() - 0.5) < 0.02
    # salt and pepper shows up as exact 0 and 1 pixels in some of them
    assert any(((o == 0) | (o == 1)).any() for o in outs)


def test_camera_noise_is_signal_dependent_shot_noise():
    gen = torch.Generator().manual_seed(0)
    dark = camera_noise(_flat(0.1, 96), np.random.default_rng(1), gen, bayer_probability=0.0)
    bright = camera_noise(_flat(0.8, 96), np.random.default_rng(1), gen, bayer_probability=0.0)
    assert abs(dark.mean().item() - 0.1) < 0.01 and abs(bright.mean().item() - 0.8) < 0.01
    # Poisson: variance grows with the signal (same gain and read noise: same rng seed)
    assert bright.var().item() > 3 * dark.var().item()


def test_demosaic_and_jpeg_keep_flat_colours_and_soften_detail(rng):
    grey = _flat(0.4)
    assert torch.allclose(bayer_demosaic(grey), grey, atol=1e-6)
    noise = torch.from_numpy(rng.random((3, 32, 32)).astype(np.float32))
    assert bayer_demosaic(noise).std() < noise.std()
    compressed = jpeg(noise, 60)
    assert compressed.shape == noise.shape and not torch.equal(compressed, noise)
    assert (compressed - noise).abs().mean() < 0.25
    assert torch.allclose(jpeg(grey, 90), grey, atol=2 / 255)


def test_jpeg_probability_is_honoured():
    batch = torch.rand(100, 3, 16, 16)
    out = apply_noise(batch, "none", np.random.default_rng(0), jpeg_probability=0.4)
    share = (out != batch).flatten(1).any(dim=1).float().mean().item()
    assert 0.25 < share < 0.55
