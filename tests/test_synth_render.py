import cv2
import numpy as np
import pytest
import torch

from hdme.train.synth import render_defocus
from hdme.train.synth.render import PSF_SHAPES, layering_error, psf_kernel, second_moment_sigma, sigma_levels
from synth_reference import scatter_render


def _to_torch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]


def _to_numpy(img: torch.Tensor) -> np.ndarray:
    return img[0].permute(1, 2, 0).double().numpy()


def test_render_matches_a_brute_force_scatter(rng):
    n = 36
    sharp = rng.random((n, n, 3))  # white noise: the hardest case for a layered approximation
    yy, xx = np.mgrid[0:n, 0:n]
    sigma = 2.0 * (1.0 + np.sin(xx / 4.0) * np.cos(yy / 5.0))
    sigma[:, :6] = 0.0  # in-focus band and σ between 0 and the first level
    sigma[:6] = rng.uniform(0.0, 0.6, (6, n))
    out = render_defocus(_to_torch(sharp), torch.from_numpy(sigma.astype(np.float32))[None, None])
    ref = scatter_render(sharp, sigma, pad=n - 1)
    assert np.abs(_to_numpy(out) - ref).max() <= 1.0 / 255.0


@pytest.mark.parametrize("shape", PSF_SHAPES)
def test_every_psf_shape_renders_within_its_documented_error(rng, shape):
    n, max_error = 32, 2.0 / 255.0  # the hdme recipe's grid
    sharp = rng.random((n, n, 3))
    yy, xx = np.mgrid[0:n, 0:n]
    sigma = 3.0 * (1.0 + np.sin(xx / 5.0) * np.cos(yy / 4.0))
    sigma[:4] = rng.uniform(0.0, 0.8, (4, n))
    out = render_defocus(_to_torch(sharp), torch.from_numpy(sigma.astype(np.float32))[None, None], psf=shape,
                         max_error=max_error)
    ref = scatter_render(sharp, sigma, pad=n - 1, psf=lambda s: psf_kernel(shape, s))
    assert np.abs(_to_numpy(out) - ref).max() <= layering_error(shape, max_error)


@pytest.mark.parametrize("sigma", [0.3, 0.8, 1.7, 3.3, 6.0])
def test_constant_map_is_an_opencv_gaussian_blur(rng, sigma):
    img = rng.random((48, 40, 3)).astype(np.float32)
    out = render_defocus(_to_torch(img), torch.full((1, 1, 48, 40), sigma))
    ref = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(_to_numpy(out) - ref).max() <= 1.0 / 255.0


def test_camera_blur_adds_in_quadrature(rng):
    img = rng.random((48, 48, 3)).astype(np.float32)
    out = render_defocus(_to_torch(img), torch.full((1, 1, 48, 48), 2.0), camera_sigma=torch.tensor([0.6]))
    ref = cv2.GaussianBlur(img, (0, 0), float(np.hypot(2.0, 0.6)), borderType=cv2.BORDER_REFLECT_101)
    assert np.abs(_to_numpy(out) - ref)[8:-8, 8:-8].max() <= 1.0 / 255.0


def test_camera_blur_alone_is_an_opencv_gaussian_blur_per_sample(rng):
    from hdme.train.synth.render import camera_blur

    imgs = rng.random((2, 40, 36, 3)).astype(np.float32)
    out = camera_blur(torch.from_numpy(imgs).permute(0, 3, 1, 2), torch.tensor([0.3, 1.1]))
    for img, sigma, got in zip(imgs, (0.3, 1.1), out):
        ref = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(got.permute(1, 2, 0).numpy() - ref).max() <= 1e-5


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0, 7.5])
def test_non_gaussian_psfs_are_labelled_by_their_second_moment(sigma):
    for shape in PSF_SHAPES:
        k = psf_kernel(shape, sigma)
        assert k.sum() == pytest.approx(1.0)
        assert second_moment_sigma(k) == pytest.approx(sigma, rel=0.02)
    disc = psf_kernel("disc", sigma)
    r = disc.shape[0] // 2
    # a disc, not a Gaussian: its support ends near radius 2σ
    assert r <= 2 * sigma + 2 and disc[r, r] > 0 and disc[0, 0] == 0


@pytest.mark.parametrize("shape", PSF_SHAPES)
def test_an_impulse_spreads_with_unit_mass_and_the_labelled_second_moment(shape):
    impulse = torch.zeros(1, 3, 64, 64)
    impulse[..., 32, 32] = 1.0
    for sigma in (1.3, 2.9, 5.2):  # between grid levels: the two-level mixture keeps σ²
        out = render_defocus(impulse, torch.full((1, 1, 64, 64), sigma), psf=shape)[0, 0].double().numpy()
        assert out.sum() == pytest.approx(1.0, abs=1e-4)
        x = np.arange(64) - 32
        assert np.sqrt((out.sum(axis=0) * x * x).sum()) == pytest.approx(sigma, rel=0.01)


def test_psf_per_sample(rng):
    img = torch.from_numpy(rng.random((2, 3, 40, 40)).astype(np.float32))
    sigma = torch.from_numpy(rng.uniform(0, 6, (2, 1, 40, 40)).astype(np.float32))
    mixed = render_defocus(img, sigma, psf=["disc", "gaussian"])
    alone = render_defocus(img[1:], sigma[1:], psf="gaussian")
    assert torch.allclose(mixed[1:], alone, atol=1e-5)
    assert not torch.allclose(mixed[:1], render_defocus(img[:1], sigma[:1], psf="gaussian"), atol=1e-3)
    with pytest.raises(ValueError):
        render_defocus(img, sigma, psf="square")


def test_level_grid_spans_zero_to_ten():
    levels = sigma_levels()
    assert levels[0] == 0.0 and levels[-1] == 10.0 and list(levels) == sorted(levels)


@pytest.mark.parametrize("shape", PSF_SHAPES)
def test_every_psf_shape_matches_a_brute_force_scatter_on_its_levels(rng, shape):
    # On the grid's own levels the layered render is the scatter itself, whatever the PSF's shape.
    n = 30
    sharp = rng.random((n, n, 3))
    levels = np.array(sigma_levels())
    sigma = levels[rng.integers(0, 20, (n, n))]
    out = render_defocus(_to_torch(sharp), torch.from_numpy(sigma.astype(np.float32))[None, None], psf=shape)
    ref = scatter_render(sharp, sigma, pad=n - 1, psf=lambda s: psf_kernel(shape, s))
    assert np.abs(_to_numpy(out) - ref).max() <= 1e-3 / 255.0


def _reach(kernel: np.ndarray, angles: np.ndarray) -> list[float]:
    """How far the kernel's support reaches from its centre along each direction, px."""
    h = kernel.shape[0] // 2
    return [max(t for t in np.arange(0, h, 0.25) if kernel[int(round(h + t * np.sin(a))), int(round(h + t * np.cos(a)))] > 0)
            for a in angles]


def test_apertures_are_their_shapes():
    sigma = 6.0
    ring, brightrim, dimrim, disc = (psf_kernel(s, sigma) for s in ("ring", "brightrim", "dimrim", "disc"))
    r = ring.shape[0] // 2
    # the ring is brighter near its rim than at its centre, the bright rim less so, the dimmed rim
    # darker; a disc is flat inside
    assert ring[r, r + int(0.8 * r)] > 2.0 * ring[r, r]
    r = brightrim.shape[0] // 2
    assert 1.3 * brightrim[r, r] < brightrim[r, r + int(0.8 * r)] < 2.0 * brightrim[r, r]
    r = dimrim.shape[0] // 2
    assert dimrim[r, r + int(0.8 * r)] < 0.7 * dimrim[r, r]
    assert disc[disc.shape[0] // 2, disc.shape[0] // 2] == pytest.approx(disc.max())
    # an iris reaches further along its corners than along its flat sides, and has as many of each as blades
    for shape, blades in (("pentagon", 5), ("hexagon", 6), ("octagon", 8)):
        reach = np.array(_reach(psf_kernel(shape, sigma), np.linspace(0, 2 * np.pi, 720, endpoint=False)))
        assert reach.max() - reach.min() >= 0.75, shape
        corners = np.fft.rfft(reach - reach.mean())
        assert int(np.argmax(np.abs(corners[1:40]))) + 1 == blades, shape


def test_zoom_in_widens_a_blurred_edge_by_its_factor():
    import math

    from hdme.train.synth.render import zoom_in

    x = torch.arange(128, dtype=torch.float32) + 0.5
    edge = 0.5 * (1 + torch.erf((x - 64) / (2.0 * math.sqrt(2))))  # a step blurred with σ = 2 px
    image = edge.expand(128, 128)[None, None].repeat(2, 3, 1, 1)
    out = zoom_in(image, torch.tensor([2.0, 1.0]), torch.tensor([[0.5, 0.5], [0.2, 0.9]]), "bicubic")
    slope = out[0, 0, 64, 1:] - out[0, 0, 64, :-1]
    slope = slope / slope.sum()
    at = torch.arange(127, dtype=torch.float32)
    mean = (slope * at).sum()
    assert abs(float((slope * (at - mean) ** 2).sum().sqrt()) - 4.0) < 0.1
    assert abs(float(mean) - 63.0) < 0.1  # the centred window keeps the edge where it was (between pixels 63 and 64)
    assert torch.allclose(out[1], image[1], atol=1e-5)  # factor 1 keeps the map
