"""The decision rule (arg-max, or a threshold on the positive class's probability, for
example one fixed for a target sensitivity) and the calibration of the probabilities: what
a clinician asks of a classifier beyond its ROC.

The positive class of a binary problem is the last in the class list (``pneumonia`` for
PneumoniaMNIST), as in :func:`task.evaluation.plots.plot_roc`.
"""

from __future__ import annotations

import math

import numpy as np


def predict_classes(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """The arg-max class, or with ``threshold`` (binary only) the positive class wherever
    its probability is at least ``threshold``."""
    if threshold is None:
        return probs.argmax(axis=1)
    if probs.shape[1] != 2:
        raise ValueError(
            f"a decision threshold needs a binary classifier; this one has {probs.shape[1]} "
            "classes (use the arg-max, threshold.mode=checkpoint)"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} is not a probability in [0, 1]")
    return (probs[:, 1] >= threshold).astype(np.int64)


def threshold_for_sensitivity(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    """The highest threshold on the positive class's probability whose sensitivity on
    ``labels`` is at least ``target``: the most specific rule that still finds that share
    of the positive cases."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity {target} must be in (0, 1]")
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError("a threshold for a target sensitivity needs a binary classifier")
    scores = np.sort(probs[np.asarray(labels) == 1, 1])[::-1]
    if len(scores) == 0:
        raise ValueError("the set has no positive cases: no sensitivity to fix a threshold on")
    needed = math.ceil(target * len(scores) - 1e-9)  # positives that must score >= threshold
    return float(scores[max(needed, 1) - 1])


def calibration_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability of the positive class's probability in ``n_bins`` equal-width bins (each
    bin's count, mean predicted probability and observed share of positives), its expected
    calibration error (ECE, the count-weighted mean gap) and the Brier score."""
    positive = probs.shape[1] - 1
    p = probs[:, positive]
    y = (np.asarray(labels) == positive).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        predicted = float(p[inside].mean()) if count else float("nan")
        observed = float(y[inside].mean()) if count else float("nan")
        if count:
            ece += count / len(p) * abs(predicted - observed)
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "predicted": predicted,
                "observed": observed,
            }
        )
    return {"bins": bins, "ece": float(ece), "brier": float(np.mean((p - y) ** 2))}
