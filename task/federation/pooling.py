"""Evaluation counts a site can send and the federation can sum (numpy only).

Each site reduces its validation predictions to a confusion matrix and a score histogram
(:func:`confusion_counts`, :func:`score_histogram`); summed over sites, by plain or secure
aggregation, they give the federation's pooled accuracy, MCC (:func:`pooled_metrics`) and
a binned AUC (:func:`auc_from_histogram`). Sites and the server both use this module.
"""

from __future__ import annotations

import math

import numpy as np

from task.constants import SCORE_BINS


def confusion_counts(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> list[int]:
    """Flattened confusion matrix (row = true class), summable across sites."""
    preds = probs.argmax(axis=1)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm.reshape(-1).tolist()


def score_histogram(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> list[int]:
    """Per true class, counts of the last class's score in ``SCORE_BINS`` equal bins
    (flattened, row = true class): summable across sites, enough for a binned AUC."""
    bins = np.minimum((probs[:, -1] * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
    hist = np.zeros((n_classes, SCORE_BINS), dtype=np.int64)
    np.add.at(hist, (labels, bins), 1)
    return hist.reshape(-1).tolist()


def auc_from_histogram(histogram: np.ndarray) -> float:
    """ROC-AUC of the last class against the first from :func:`score_histogram` counts
    (scores in one bin count as ties); NaN when a class is absent."""
    hist = np.asarray(histogram, dtype=np.float64).reshape(-1, SCORE_BINS)
    neg, pos = hist[0], hist[-1]
    if neg.sum() == 0 or pos.sum() == 0:
        return float("nan")
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def pooled_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Federation-wide accuracy, balanced accuracy and MCC from summed confusion counts."""
    cm = np.asarray(confusion, dtype=np.float64)
    n = cm.sum()
    if n == 0:
        raise ValueError("no evaluation examples to pool")
    t, p, c = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm)
    denom = math.sqrt(max(n**2 - (p**2).sum(), 0.0) * max(n**2 - (t**2).sum(), 0.0))
    recall = np.divide(np.diag(cm), t, out=np.zeros_like(t), where=t > 0)
    return {
        "accuracy": float(c / n),
        "balanced_accuracy": float(recall[t > 0].mean()),
        "mcc": float((c * n - (t * p).sum()) / denom) if denom else 0.0,
        "num-examples": int(n),
    }
