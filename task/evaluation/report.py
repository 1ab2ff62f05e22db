"""Write an entry point's results: ``metrics.json`` and PNG plots in its run directory."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from task.constants import METRICS_FILE
from task.evaluation import plots
from task.evaluation.reference import with_expert_readers


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "undefined" (e.g. AUC of one class)
    return value


def write_json(data: Any, path: Path) -> Path:
    path.write_text(json.dumps(_json_safe(data), indent=2, sort_keys=False) + "\n")
    return path


def write_benchmark(result: dict[str, Any], path: Path, summary: Any = None) -> Path:
    """Write a benchmark's JSON, print ``summary`` (if any) and where the file went."""
    write_json(result, path)
    if summary is not None:
        print(json.dumps(_json_safe(summary), indent=2))
    print(f"written {path}")
    return path


def write_run_outputs(
    run_dir: Path,
    metrics: dict[str, Any],
    *,
    test_labels: np.ndarray,
    test_probs: np.ndarray,
    classes: Sequence[str],
    history: Sequence[dict],
    curve_keys: Sequence[str],
    xlabel: str,
    test_fingerprint: str | None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``roc.png``, ``confusion_matrix.png`` and ``curves.png``;
    the expert readers join the metrics only where the test split, by its content hash
    ``test_fingerprint``, is PneumoniaMNIST's published one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = with_expert_readers(metrics, test_fingerprint)
    test = metrics["test"]
    if test.get("auc") is not None and math.isfinite(test["auc"]):
        plots.plot_roc(test_labels, test_probs, test["auc"], run_dir / "roc.png")
    plots.plot_confusion(test["confusion_matrix"], classes, run_dir / "confusion_matrix.png")
    if history:
        plots.plot_curves(history, curve_keys, run_dir / "curves.png", xlabel=xlabel)
    write_json(metrics, run_dir / METRICS_FILE)
    return metrics
