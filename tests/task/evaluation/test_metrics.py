"""Clinical metrics agree with hand-computed values and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from task.evaluation.metrics import bootstrap_auc_ci, clinical_metrics


def _probs(p1: list[float]) -> np.ndarray:
    p1 = np.asarray(p1)
    return np.stack([1 - p1, p1], axis=1)


def test_confusion_sensitivity_specificity_by_hand() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    probs = _probs([0.1, 0.2, 0.7, 0.3, 0.9, 0.8, 0.6, 0.4, 0.95, 0.3])
    m = clinical_metrics(labels, probs, ["normal", "pneumonia"], n_bootstrap=0)
    # predictions: 0 0 1 0 | 1 1 1 0 1 0  -> TN=3 FP=1 FN=2 TP=4
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["per_class"]["pneumonia"]["sensitivity"] == pytest.approx(4 / 6)
    assert m["per_class"]["pneumonia"]["specificity"] == pytest.approx(3 / 4)
    assert m["per_class"]["normal"]["sensitivity"] == pytest.approx(3 / 4)
    assert m["per_class"]["pneumonia"]["precision"] == pytest.approx(4 / 5)  # PPV
    assert m["per_class"]["pneumonia"]["npv"] == pytest.approx(3 / 5)  # TN / (TN + FN)
    assert m["per_class"]["normal"]["npv"] == pytest.approx(4 / 5)
    assert "threshold" not in m  # the arg-max, as training tests
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    tp, tn, fp, fn = 4, 3, 1, 2
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == pytest.approx(mcc)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))


def test_bootstrap_ci_brackets_auc_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    intervals = []
    for n in (100, 2000):
        labels = rng.integers(0, 2, n)
        score = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, n), 0, 1)
        probs = _probs(score)
        auc = roc_auc_score(labels, score)
        low, high = bootstrap_auc_ci(labels, probs, n_bootstrap=300, seed=1)
        assert low < auc < high
        intervals.append(high - low)
    assert intervals[1] < intervals[0] / 2


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        clinical_metrics(np.zeros(3, int), np.zeros((4, 2)), ["a", "b"])


def test_single_class_auc_is_undefined_not_crash() -> None:
    m = clinical_metrics(np.zeros(4, int), _probs([0.1, 0.2, 0.3, 0.9]), ["a", "b"], n_bootstrap=10)
    assert np.isnan(m["auc"])
    assert m["accuracy"] == pytest.approx(0.75)


def test_threshold_moves_the_decision_and_is_reported() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    probs = _probs([0.1, 0.2, 0.7, 0.3, 0.9, 0.8, 0.6, 0.4, 0.95, 0.3])
    m = clinical_metrics(labels, probs, ["normal", "pneumonia"], n_bootstrap=0, threshold=0.3)
    # p >= 0.3: 0 0 1 1 | 1 1 1 1 1 1 -> TN=2 FP=2 FN=0 TP=6
    assert m["confusion_matrix"] == [[2, 2], [0, 6]]
    assert m["threshold"] == 0.3
    assert m["per_class"]["pneumonia"]["sensitivity"] == 1.0
    assert m["per_class"]["pneumonia"]["npv"] == 1.0
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))  # unchanged


def test_npv_without_negative_predictions_is_undefined() -> None:
    m = clinical_metrics(
        np.array([0, 1, 1]), _probs([0.6, 0.7, 0.9]), ["normal", "pneumonia"], n_bootstrap=0
    )
    assert np.isnan(m["per_class"]["pneumonia"]["npv"])
