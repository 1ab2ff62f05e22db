"""Run directories as the entry points write them, for the report's tests: a federation
(local DP, secure aggregation, a refused and a declining site) and an evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from task.evaluation.plots import plot_confusion, plot_curves, plot_roc

#: A site name a report must show as text, never as markup.
ODD_SITE = "<b>site-x</b>"
SITES = ("site-0", "site-1", ODD_SITE)


def _round(r: int) -> dict:
    eps = {s: 0.5 * r + i for i, s in enumerate(SITES)}
    sites = {s: {"train": {}, "evaluate": {}, "privacy": {"epsilon": eps[s]}} for s in SITES}
    entry = {
        "round": r,
        "train": {"num-examples": 300, "lr": 0.01, "secure-sites": 3},
        "evaluate": {"auc": 0.8 + r / 100, "mcc": 0.5 + r / 50, "accuracy": 0.8, "loss": 0.4},
        "sites": sites,
        "failures": {"train": int(r == 2), "evaluate": 0},
        "rejected": {},
        "declined": {},
        "seconds": 2.5,
        "privacy": {"sites": eps},
        "secure_seconds": {"advertise": 0.1 * r, "share": 0.2, "consistency": 0.05, "unmask": 0.3},
    }
    if r == 2:
        entry["declined"] = {"site-1": "budget"}
        del sites["site-1"]
    if r == 3:
        entry["rejected"] = {ODD_SITE: "update norm 9.1 > 5 <bound>"}
    return entry


def _test_metrics() -> dict:
    return {
        "n": 40,
        "auc": 0.91,
        "accuracy": 0.85,
        "balanced_accuracy": 0.84,
        "mcc": 0.7,
        "per_class": {
            "normal": {
                "sensitivity": 0.8,
                "specificity": 0.9,
                "precision": 0.85,
                "npv": 0.8765,
                "f1": 0.82,
                "support": 15,
            },
            "pneumonia": {
                "sensitivity": 0.9,
                "specificity": 0.8,
                "precision": 0.88,
                "f1": 0.89,
                "support": 25,
            },
        },
        "confusion_matrix": [[12, 3], [3, 22]],
        "auc_ci": {"level": 0.95, "low": 0.83, "high": 0.97, "n_bootstrap": 50},
    }


def _plots(run_dir: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 15 + [1] * 25)
    p1 = np.clip(labels * 0.6 + rng.random(40) * 0.4, 0, 1)
    plot_roc(labels, np.stack([1 - p1, p1], axis=1), 0.91, run_dir / "roc.png")
    plot_confusion([[12, 3], [3, 22]], ("normal", "pneumonia"), run_dir / "confusion_matrix.png")


def federation_run(run_dir: Path) -> Path:
    """A three-round local-DP federation under secure aggregation."""
    run_dir.mkdir(parents=True, exist_ok=True)
    history = [_round(r) for r in (1, 2, 3)]
    metrics = {
        "test": _test_metrics(),
        "val": history[-1]["evaluate"],
        "selection": "last",
        "rounds_run": 3,
        "secure": "strategies.secure.SecureAggregation",
        "privacy": {
            "mode": "local_dp",
            "stopped_early": None,
            "delta": 1e-5,
            "budget": 3.0,
            "sites": history[-1]["privacy"]["sites"],
        },
        "expert_readers": {"accuracy": 0.795, "mcc": 0.579},
    }
    (run_dir / "history.json").write_text(json.dumps(history))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    _plots(run_dir)
    rows = [{"round": h["round"], "val_auc": h["evaluate"]["auc"]} for h in history]
    plot_curves(rows, ("val_auc",), run_dir / "curves.png", xlabel="round")
    return run_dir


def evaluation_run(run_dir: Path) -> Path:
    """What an evaluation of a checkpoint writes: metrics, ROC and the predictions."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(_test_metrics()))
    _plots(run_dir)
    (run_dir / "confusion_matrix.png").unlink()
    lines = ["file,label,p_pneumonia"] + [f"img{i}.png,{i % 2},0.{i}" for i in range(7)]
    (run_dir / "predictions.csv").write_text("\n".join(lines) + "\n")
    return run_dir
