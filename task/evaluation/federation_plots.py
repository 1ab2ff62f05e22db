"""The federation's figures that no run writes as a PNG: pooled validation per round, each
site's part in each round and ε per site, drawn for ``report.html`` (PNG bytes in memory)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")  # headless: the coordinator and CI have no display
import matplotlib.pyplot as plt
import numpy as np

from task.federation.participation import PARTS, epsilon_series, site_names, site_part

POOLED_KEYS = ("auc", "mcc", "accuracy", "loss")
#: One colour per :data:`~task.federation.participation.PARTS` entry.
COLOURS = ("#dddddd", "#4c9f50", "#e8a33d", "#c8413b")


def _png(fig) -> bytes:
    out = io.BytesIO()
    fig.tight_layout()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def pooled_figure(history: Sequence[dict[str, Any]]) -> bytes | None:
    """One panel per pooled validation metric any round holds; None when none does."""
    keys = [k for k in POOLED_KEYS if any(k in h.get("evaluate", {}) for h in history)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    rounds = [h["round"] for h in history]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(rounds, [h.get("evaluate", {}).get(key, np.nan) for h in history], marker="o")
        ax.set(xlabel="round", title=f"pooled val {key}")
        ax.grid(alpha=0.3)
    return _png(fig)


def participation_figure(history: Sequence[dict[str, Any]]) -> bytes | None:
    """Sites by rounds, coloured by what each site did; None without sites."""
    sites = site_names(history)
    if not sites or not history:
        return None
    grid = np.array([[PARTS.index(site_part(h, s)) for h in history] for s in sites])
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.25 * len(history)), 1.4 + 0.35 * len(sites)))
    cmap = matplotlib.colors.ListedColormap(COLOURS)
    ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(PARTS) - 1, aspect="auto")
    ax.set_yticks(range(len(sites)), sites)
    ticks = range(0, len(history), max(1, len(history) // 12))
    ax.set_xticks(list(ticks), [str(history[i]["round"]) for i in ticks])
    ax.set(xlabel="round", title="each site's part per round")
    handles = [
        matplotlib.patches.Patch(color=c, label=p) for p, c in zip(PARTS, COLOURS, strict=True)
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return _png(fig)


def epsilon_figure(history: Sequence[dict[str, Any]], budget: float | None) -> bytes | None:
    """ε spent after each round, one line per site; None when no round reports ε."""
    series = epsilon_series(history)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for site, points in sorted(series.items()):
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=site)
    if budget is not None:
        ax.axhline(budget, color="k", ls="--", lw=0.8, label=f"budget {budget:g}")
    ax.set(xlabel="round", ylabel="ε", title="ε spent per site")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)
