"""Decision rules and calibration against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from task.evaluation.clinical import calibration_bins, predict_classes, threshold_for_sensitivity


def _probs(p1: list[float]) -> np.ndarray:
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p1, p1], axis=1)


def test_predict_classes_argmax_or_threshold() -> None:
    probs = _probs([0.2, 0.5, 0.7])
    assert predict_classes(probs).tolist() == [0, 0, 1]  # a tie goes to the first class
    assert predict_classes(probs, 0.5).tolist() == [0, 1, 1]
    with pytest.raises(ValueError, match="binary classifier; this one has 3"):
        predict_classes(np.full((2, 3), 1 / 3), 0.5)
    with pytest.raises(ValueError, match="not a probability"):
        predict_classes(probs, 1.5)


@pytest.mark.parametrize(
    ("target", "expected"),
    [(1.0, 0.3), (0.8, 0.4), (0.75, 0.4), (0.6, 0.6), (0.2, 0.95), (0.01, 0.95)],
)
def test_threshold_for_sensitivity_is_the_highest_that_reaches_the_target(
    target: float, expected: float
) -> None:
    # positives score 0.95, 0.8, 0.6, 0.4, 0.3: the k-th highest finds k of the 5
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    probs = _probs([0.1, 0.7, 0.5, 0.95, 0.8, 0.6, 0.4, 0.3])
    threshold = threshold_for_sensitivity(labels, probs, target)
    assert threshold == pytest.approx(expected)
    found = (probs[labels == 1, 1] >= threshold).mean()
    assert found >= target
    # any higher threshold misses the target
    assert (probs[labels == 1, 1] > threshold).mean() < target


def test_threshold_for_sensitivity_refuses_what_it_cannot_fix() -> None:
    with pytest.raises(ValueError, match="no positive cases"):
        threshold_for_sensitivity(np.array([0, 0]), _probs([0.1, 0.2]), 0.9)
    with pytest.raises(ValueError, match="must be in"):
        threshold_for_sensitivity(np.array([0, 1]), _probs([0.1, 0.2]), 0.0)


def test_calibration_bins_ece_and_brier_by_hand() -> None:
    labels = np.array([0, 1, 0, 1, 1])
    p = [0.05, 0.05, 0.95, 0.95, 0.95]
    cal = calibration_bins(labels, _probs(p), n_bins=2)
    low, high = cal["bins"]
    assert (low["count"], high["count"]) == (2, 3)
    assert low["predicted"] == pytest.approx(0.05) and low["observed"] == pytest.approx(0.5)
    assert high["predicted"] == pytest.approx(0.95) and high["observed"] == pytest.approx(2 / 3)
    assert cal["ece"] == pytest.approx(2 / 5 * 0.45 + 3 / 5 * (0.95 - 2 / 3))
    brier = np.mean((np.array(p) - labels) ** 2)
    assert cal["brier"] == pytest.approx(brier)


def test_calibration_empty_bins_are_counted_not_averaged() -> None:
    cal = calibration_bins(np.array([0, 1]), _probs([0.0, 1.0]), n_bins=4)
    assert [b["count"] for b in cal["bins"]] == [1, 0, 0, 1]
    assert np.isnan(cal["bins"][1]["predicted"])
