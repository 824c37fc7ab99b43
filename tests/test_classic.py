"""Zhuo–Sim baseline: the ratio formula, edges of known blur, whole maps, and its speed (printed)."""


import cv2
import numpy as np
import pytest

from hdme.errors import HdmeError
from hdme.runtime.classic import ZhuoSimPredictor, domain_transform_fill, sigma_from_ratio

PIXEL_VARIANCE = 1.0 / 12.0  # an area-sampled sharp edge already carries a box of one pixel


def disc_image(size: int = 96, radius: float = 30.0, supersample: int = 8) -> np.ndarray:
    """A grey disc on a darker ground, area-sampled from an 8× grid so its edge is truly sharp."""
    yy, xx = np.mgrid[0 : size * supersample, 0 : size * supersample] / supersample
    inside = (xx - size / 2 - 0.3) ** 2 + (yy - size / 2 + 0.2) ** 2 < radius**2
    grey = np.where(inside, 200.0, 60.0).astype(np.float32)
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)


def to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(grey + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def blurred(grey: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(grey, (0, 0), sigma) if sigma > 0 else grey


def test_ratio_formula_inverts_the_edge_model():
    s1, s2 = 1.0, 2.0
    sigma = np.array([0.0, 0.3, 1.0, 2.5, 7.0])
    ratio = np.sqrt((sigma**2 + s2**2) / (sigma**2 + s1**2))
    assert np.allclose(sigma_from_ratio(ratio, s1, s2), sigma, atol=1e-4)
    # the form √((R²σ1² − σ2²)/(1 − R²)) is the same expression
    assert np.allclose(np.sqrt((ratio**2 * s1**2 - s2**2) / (1 - ratio**2)), sigma, atol=1e-6)
    # R at the upper bound σ2/σ1 is a sharp edge; R ≤ 1 is not measurable
    assert sigma_from_ratio(np.array([s2 / s1]), s1, s2)[0] == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(sigma_from_ratio(np.array([1.0, 0.9]), s1, s2)).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.0, 4.0, 6.0])
def test_edge_sigma_on_a_disc_of_known_blur(sigma):
    # Measured on this disc: |median error| ≤ 0.03 px up to σ = 4, 0.08 px at σ = 6; 10–90 % spread 0.73 px at σ = 6.
    _, _, edge = ZhuoSimPredictor().edge_sigma(to_rgb(blurred(disc_image(), sigma)))
    truth = np.sqrt(sigma**2 + PIXEL_VARIANCE)
    assert len(edge) > 150  # the whole circumference is found
    assert abs(np.median(edge) - truth) <= 0.04 + 0.02 * sigma
    assert np.percentile(edge, 90) - np.percentile(edge, 10) <= 0.1 + 0.15 * sigma  # 8-bit steps widen it at large σ


def test_map_of_uniform_blur_is_uniform():
    rng = np.random.default_rng(3)
    img = np.full((96, 128, 3), 120, np.uint8)
    for _ in range(25):
        x, y, r = (int(v) for v in rng.integers([0, 0, 5], [128, 96, 20]))
        cv2.circle(img, (x, y), r, tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    for sigma in (1.0, 2.5):
        sigma_map = ZhuoSimPredictor().predict(cv2.GaussianBlur(img, (0, 0), sigma))
        assert sigma_map.shape == (96, 128) and sigma_map.dtype == np.float32
        assert abs(np.median(sigma_map) - sigma) <= 0.1 * sigma + 0.05


def test_two_depths_are_told_apart():
    # A sharp textured disc over a background blurred by 3 px: the map follows the disc.
    rng = np.random.default_rng(5)
    texture = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    texture = cv2.resize(texture, (128, 96), interpolation=cv2.INTER_NEAREST)
    background = cv2.GaussianBlur(texture[::-1, ::-1].copy(), (0, 0), 3.0)
    mask = np.zeros((96, 128), np.uint8)
    cv2.circle(mask, (64, 48), 30, 1, -1)
    img = np.where(mask[..., None] > 0, texture, background)
    sigma_map = ZhuoSimPredictor().predict(img)
    inner = cv2.erode(mask, np.ones((9, 9), np.uint8)) > 0
    outer = cv2.dilate(mask, np.ones((9, 9), np.uint8)) == 0
    assert np.median(sigma_map[inner]) < 1.0
    assert np.median(sigma_map[outer]) > 2.0


def test_domain_transform_fill_stops_at_colour_edges():
    guide = np.zeros((20, 40, 1), np.float32)
    guide[:, 20:] = 1.0
    values = np.zeros((20, 40), np.float32)
    weights = np.zeros((20, 40), np.float32)
    values[10, 5], weights[10, 5] = 1.0, 1.0
    values[10, 35], weights[10, 35] = 4.0, 1.0
    filled, reach = domain_transform_fill(values, weights, guide, sigma_s=30.0, sigma_r=0.1)
    assert np.allclose(filled[:, :19], 1.0, atol=0.05) and np.allclose(filled[:, 21:], 4.0, atol=0.05)
    assert (reach > 0).all()


def test_flat_image_and_bad_input():
    assert not ZhuoSimPredictor().predict(np.full((40, 40, 3), 90, np.uint8)).any()
    with pytest.raises(HdmeError):
        ZhuoSimPredictor().predict(np.zeros((40, 40), np.float32))
    with pytest.raises(HdmeError):
        ZhuoSimPredictor(sigma1=2.0, sigma2=1.0)


def test_max_side_keeps_sigma_in_input_pixels():
    img = to_rgb(blurred(disc_image(size=160, radius=50), 4.0))
    full = ZhuoSimPredictor().predict(img)
    half = ZhuoSimPredictor(max_side=80).predict(img)
    assert half.shape == full.shape
    assert abs(np.median(half) - np.median(full)) <= 0.5
