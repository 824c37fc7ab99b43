import numpy as np
import pytest

from hdme import metrics


def test_map_metrics_hand_computed():
    gt = np.array([[1.0, 2.0], [4.0, 0.2]])
    pred = np.array([[1.0, 3.0], [2.0, 0.0]])
    m = metrics.map_metrics(pred, gt)
    err = np.array([0.0, 1.0, -2.0, -0.2])
    assert m["mse"] == pytest.approx(np.mean((err / 10) ** 2))
    assert m["mae"] == pytest.approx(np.mean(np.abs(err)) / 10)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    # Ratio metrics skip the pixel with σ < 0.5 px: pixels (1,1), (2,3), (4,2).
    assert m["abs_rel"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 1 / 2 + 4 / 4) / 3)
    assert m["rmse_log"] == pytest.approx(np.sqrt((0 + np.log(1.5) ** 2 + np.log(0.5) ** 2) / 3))
    # ratios 1, 1.5, 2 → δ<1.25: 1/3; δ<1.5625: 2/3; δ<1.953: 2/3
    assert m["d1"] == pytest.approx(1 / 3)
    assert m["d2"] == pytest.approx(2 / 3)
    assert m["d3"] == pytest.approx(2 / 3)


def test_map_metrics_shape_mismatch():
    with pytest.raises(ValueError):
        metrics.map_metrics(np.zeros((2, 2)), np.zeros((2, 3)))


def test_rtf_protocol_clips_normalises_and_crops():
    gt = np.array([[0.3, 3.275, 1.0]])
    pred = np.array([[0.3, 9.0, 0.0], ])
    m = metrics.rtf_metrics(pred, gt)
    # 9 px clips to 3.275 → no error; last pixel error 1.0 px → 1/3.275
    assert m["mae"] == pytest.approx((1.0 / 3.275) / 3)
    assert m["mse"] == pytest.approx((1.0 / 3.275) ** 2 / 3)
    # A larger prediction is cropped to the common top-left region.
    big = np.pad(pred, ((0, 2), (0, 5)), constant_values=7.0)
    assert metrics.rtf_metrics(big, gt) == pytest.approx(m)


def test_blur_detection_perfect_and_inverted():
    mask = np.zeros((8, 8), bool)
    mask[:, :3] = True  # in focus on the left
    sigma = np.where(mask, 0.3, 4.0)
    m = metrics.blur_detection_metrics(sigma, mask)
    assert m["best_f"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(0.0)
    inv = metrics.blur_detection_metrics(np.where(mask, 4.0, 0.3), mask)
    # Inverted map: every threshold in (0, 1] selects only blurred pixels.
    assert inv["best_f"] == pytest.approx(0.0)
    assert inv["mae"] == pytest.approx(1.0)


def test_blur_detection_hand_computed_threshold():
    mask = np.array([[True, True, False, False]])
    sigma = np.array([[0.0, 2.0, 1.0, 4.0]])  # scores 1, 0.5, 0.75, 0
    m = metrics.blur_detection_metrics(sigma, mask)
    # Thresholds: score ≥ 1 → P 1, R 0.5: F = 1.3*0.5/(0.3+0.5) = 0.8125
    #             score ≥ 0.75 → P 0.5, R 0.5: F 0.5;  score ≥ 0.5 → P 2/3, R 1: F 1.3*(2/3)/(0.2+1)=0.7222
    assert m["best_f"] == pytest.approx(0.8125)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)


def test_mean_metrics_ignores_nan():
    rows = [{"mae": 1.0, "d1": float("nan")}, {"mae": 3.0, "d1": 0.5}]
    assert metrics.mean_metrics(rows) == {"mae": 2.0, "d1": 0.5}
