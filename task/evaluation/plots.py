"""PNG plots written beside ``metrics.json``: ROC curve, confusion matrix, training curves,
reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: sites and CI have no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve


def plot_roc(labels: np.ndarray, probs: np.ndarray, auc: float, path: Path) -> Path:
    """ROC of the positive (last) class against the rest."""
    fpr, tpr, _ = roc_curve(labels == probs.shape[1] - 1, probs[:, -1])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (test)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black"
        )
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(history: Sequence[dict], keys: Sequence[str], path: Path, xlabel: str) -> Path:
    """One panel per key (for example train loss, validation AUC, validation MCC); a key
    that no row holds gets none (a local-DP federation reports no training loss)."""
    keys = [key for key in keys if any(key in h for h in history)] or list(keys)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    x = [h.get("epoch", h.get("round", i + 1)) for i, h in enumerate(history)]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(x, [h.get(key, np.nan) for h in history], marker="o", ms=3)
        ax.set(xlabel=xlabel, title=key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_calibration(calibration: dict, path: Path) -> Path:
    """Reliability diagram of the positive class's probability (bins from
    :func:`task.evaluation.clinical.calibration_bins`), with each bin's count below."""
    bins = [b for b in calibration["bins"] if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in calibration["bins"]]
    width = calibration["bins"][0]["high"] - calibration["bins"][0]["low"]
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    ax.plot(
        [b["predicted"] for b in bins],
        [b["observed"] for b in bins],
        marker="o",
        label=f"model (ECE {calibration['ece']:.3f})",
    )
    ax.set(ylabel="observed share of positives", title="Calibration", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    hist.bar(centres, [b["count"] for b in calibration["bins"]], width=width * 0.9)
    hist.set(xlabel="predicted probability of the positive class", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
