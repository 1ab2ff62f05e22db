"""Aggregation of evaluation metrics: pool confusion counts instead of averaging ratios.

Averaging per-site MCCs is not the federation's MCC; summing each site's confusion matrix
and computing accuracy and MCC from the sum is. AUC cannot be pooled from counts, so it is
the example-weighted mean of the sites' AUCs (sites whose validation split holds a single
class report no AUC and are left out of that mean).
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import MetricRecord, RecordDict

from task.federation.pooling import auc_from_histogram, pooled_metrics


def _from_confusion(confusion: np.ndarray) -> dict:
    """Pooled accuracy, balanced accuracy and MCC from flattened summed confusion counts."""
    confusion = np.asarray(confusion, dtype=np.int64).reshape(-1)
    k = math.isqrt(len(confusion))
    if k * k != len(confusion):
        raise ValueError(f"confusion counts of length {len(confusion)} are not a square matrix")
    out = pooled_metrics(confusion.reshape(k, k))
    out["confusion"] = confusion.tolist()
    return out


def pooled_evaluate_metrics(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """``evaluate_metrics_aggr_fn`` for Flower strategies (same signature as Flower's)."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    confusion = np.sum([np.asarray(m["confusion"], dtype=np.int64) for m in metrics], axis=0)
    out = _from_confusion(confusion)
    weights = np.asarray([float(m[weighting_metric_name]) for m in metrics])
    losses = np.asarray([float(m["loss"]) for m in metrics])
    out["loss"] = float((weights * losses).sum() / weights.sum())
    aucs = [
        (w, float(m["auc"]))
        for w, m in zip(weights, metrics, strict=True)
        if math.isfinite(float(m["auc"]))
    ]
    if aucs:
        out["auc"] = float(sum(w * a for w, a in aucs) / sum(w for w, _ in aucs))
    return MetricRecord(out)


def metrics_from_sums(sums: dict[str, np.ndarray], n_examples: float) -> MetricRecord:
    """Federation metrics from securely summed evaluation counts (nothing per site).

    ``sums`` holds the summed ``confusion`` and ``score-histogram`` counts and the summed
    example-weighted float metrics (``loss`` times examples); AUC comes from the summed
    score histograms.
    """
    out = _from_confusion(np.rint(sums["confusion"]))
    out["loss"] = float(sums["loss"]) / n_examples
    if "score-histogram" in sums:
        out["auc"] = auc_from_histogram(np.rint(sums["score-histogram"]))
    return MetricRecord(out)
