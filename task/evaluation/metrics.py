"""Clinical metrics with scikit-learn: what a radiology paper and an ethics board ask for.

ROC-AUC with a percentile-bootstrap confidence interval, accuracy, balanced accuracy,
Matthews correlation (PriMIA's model-selection metric), per-class sensitivity, specificity,
precision (the positive predictive value, PPV), negative predictive value (NPV) and F1, and
the confusion matrix. Binary problems use the positive class's probability for the AUC;
multi-class problems a one-vs-rest macro AUC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from task.evaluation.clinical import predict_classes


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=np.arange(probs.shape[1])))


def bootstrap_auc_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the ROC-AUC (resamples with both classes present)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level {level} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    n = len(labels)
    aucs = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        if len(np.unique(labels[idx])) < 2:
            continue
        aucs.append(_auc(labels[idx], probs[idx]))
    if not aucs:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _per_class(
    labels: np.ndarray, preds: np.ndarray, cm: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each class against the rest: sensitivity, specificity, precision (PPV), NPV, F1 and
    support; a rate with no cases to count (NPV with every image predicted positive, say)
    is NaN, undefined rather than zero."""
    index = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=index, zero_division=0
    )
    out = {}
    for i, name in enumerate(classes):
        tn = cm.sum() - cm[i, :].sum() - cm[:, i].sum() + cm[i, i]
        fp = cm[:, i].sum() - cm[i, i]
        fn = cm[i, :].sum() - cm[i, i]
        out[name] = {
            "sensitivity": float(recall[i]),
            "specificity": float(tn / (tn + fp)) if (tn + fp) else float("nan"),
            "precision": float(precision[i]),
            "npv": float(tn / (tn + fn)) if (tn + fn) else float("nan"),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
    return out


def clinical_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    threshold: float | None = None,
) -> dict:
    """All metrics for one split as a JSON-ready dict.

    Args:
        labels: true class indices ``(N,)``.
        probs: predicted probabilities ``(N, C)``.
        classes: class names in label order.
        n_bootstrap: bootstrap resamples for the AUC interval (0 skips it).
        threshold: ``None``: the prediction is the arg-max; else (binary only) the positive
            class wherever its probability is at least ``threshold`` (also reported).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)):
        raise ValueError(
            f"probs of shape {probs.shape} do not match {len(labels)} labels and "
            f"{len(classes)} classes"
        )
    preds = predict_classes(probs, threshold)
    cm = confusion_matrix(labels, preds, labels=np.arange(len(classes)))
    per_class = _per_class(labels, preds, cm, classes)
    out = {
        "n": len(labels),
        "auc": _auc(labels, probs),
        "accuracy": float(accuracy_score(labels, preds)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, preds)),
        "mcc": float(matthews_corrcoef(labels, preds)),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
    if threshold is not None:
        out["threshold"] = float(threshold)
    if n_bootstrap > 0:
        low, high = bootstrap_auc_ci(labels, probs, n_bootstrap=n_bootstrap, level=level, seed=seed)
        out["auc_ci"] = {"level": level, "low": low, "high": high, "n_bootstrap": n_bootstrap}
    return out
