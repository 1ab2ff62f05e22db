"""Evaluate a trained checkpoint on labelled images: ``python -m scripts.evaluate``.

The flow: rebuild the checkpoint (:mod:`task.evaluation.trained`), read the labelled set
through its preprocessing (:mod:`task.evaluation.labelled`), predict with the loop
training tests with (:func:`task.training.engine.predict`, the same batch size), fix the
decision rule, and compute the metrics with :func:`task.evaluation.metrics.clinical_metrics`
and the same bootstrap settings. On the split a training run tested, the ``test`` entry
of ``metrics.json`` is therefore that run's, number for number.

Writes to the run directory ``metrics.json``, ``roc.png``, ``calibration.png``,
``confusion_matrix.png`` and ``predictions.csv`` (one row per image: path, label,
probability of the positive class, prediction).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from task.constants import METRICS_FILE, PROGRESS_LOGGER
from task.data.errors import printable
from task.evaluation import plots
from task.evaluation.clinical import calibration_bins, predict_classes, threshold_for_sensitivity
from task.evaluation.html_report import write_html_report
from task.evaluation.labelled import DataSpec, LabelledSet, load_labelled
from task.evaluation.metrics import clinical_metrics
from task.evaluation.reference import comparison_line, is_published_test, with_expert_readers
from task.evaluation.report import write_json
from task.evaluation.trained import Trained, load_trained
from task.training.engine import predict

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)

#: Decision rules: the checkpoint's (its threshold if training fixed one, else the arg-max,
#: as training tested) or a threshold fixed for a target sensitivity.
THRESHOLD_MODES = ("checkpoint", "sensitivity")

PREDICTIONS_FILE = "predictions.csv"


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on ``cfg.data``; write and return the metrics."""
    check_threshold(cfg.threshold)
    trained = load_trained(cfg.checkpoint)
    data = load_labelled(_spec(cfg.data), trained)
    log.info("data: %s", data.report.summary())
    probs, labels = _predict(trained, data, cfg.eval_batch_size)
    threshold = decision_rule(cfg, trained, labels, probs)
    test = clinical_metrics(
        labels,
        probs,
        trained.classes,
        n_bootstrap=cfg.metrics.n_bootstrap,
        level=cfg.metrics.ci_level,
        seed=cfg.seed,
        threshold=threshold["value"],
    )
    metrics = _metrics(cfg, trained, data, test, threshold, calibration_bins(labels, probs))
    _write_outputs(run_dir, metrics, data, labels, probs, trained.classes)
    write_html_report(run_dir)
    progress.info("%d images of %s", len(labels), data.source)
    progress.info(comparison_line(test, data.split.fingerprint))
    if data.report.n_skipped:
        log.warning("data: %s", data.report.summary())
    return metrics


def _spec(node: DictConfig, name: str = "data") -> DataSpec:
    """The labelled set a config node names; a key :class:`DataSpec` lacks is refused."""
    values = OmegaConf.to_container(node, resolve=True)
    unknown = sorted(set(values) - set(DataSpec.__dataclass_fields__))
    if unknown:
        raise ValueError(
            f"{name} has unknown keys {unknown}; known: {list(DataSpec.__dataclass_fields__)}"
        )
    return DataSpec(**values)


def _metrics(
    cfg: DictConfig,
    trained: Trained,
    data: LabelledSet,
    test: dict[str, Any],
    threshold: dict[str, Any],
    calibration: dict[str, Any],
) -> dict[str, Any]:
    """The ``metrics.json`` entries: the evaluated set's metrics under ``test`` (the key
    training runs use), the decision rule, calibration, what was evaluated on what, and
    the expert readers where the set is the published test split."""
    config = trained.config
    metrics = {
        "test": test,
        "threshold": threshold,
        "calibration": calibration,
        "checkpoint": {
            "path": str(trained.path),
            "model": config["model"].get("_target_"),
            "classes": list(trained.classes),
            "resolution": config["resolution"],
            "channels": config["channels"],
        },
        "data": {
            "source": data.source,
            "content_sha256": data.split.fingerprint,
            "published_test_split": is_published_test(data.split.fingerprint),
            **data.report.to_dict(),
        },
        "seed": cfg.seed,
    }
    return with_expert_readers(metrics, data.split.fingerprint)


def _predict(trained: Trained, data: LabelledSet, batch_size: int) -> tuple[np.ndarray, ...]:
    return predict(trained.model, data.split.loader(batch_size, shuffle=False))


def check_threshold(threshold: DictConfig) -> str:
    """The threshold mode, once its settings are known to make sense (before any data is
    read); a ValueError naming the setting otherwise."""
    if threshold.mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold.mode={threshold.mode!r} is not one of {list(THRESHOLD_MODES)}")
    if threshold.mode == "checkpoint" and threshold.get("data") is not None:
        raise ValueError(
            "threshold.data is set, but threshold.mode=checkpoint fixes no threshold on data; "
            "set threshold.mode=sensitivity or threshold.data=null"
        )
    return threshold.mode


def decision_rule(
    cfg: DictConfig, trained: Trained, labels: np.ndarray, probs: np.ndarray
) -> dict[str, Any]:
    """The threshold entry of ``metrics.json``: its mode and ``value`` (``None``: arg-max).

    ``sensitivity`` fixes the highest threshold whose sensitivity for the positive (last)
    class reaches ``threshold.target`` on ``threshold.data``, or, where that is ``None``,
    on the evaluated set itself, which flatters the evaluated sensitivity.
    """
    mode = check_threshold(cfg.threshold)
    if mode == "checkpoint":
        value = trained.threshold
        rule = "arg-max" if value is None else "the checkpoint's threshold"
        return {"mode": mode, "value": value, "rule": rule}
    fixed_on = "the evaluated set"
    if cfg.threshold.get("data") is not None:
        held_out = load_labelled(_spec(cfg.threshold.data, "threshold.data"), trained)
        probs, labels = _predict(trained, held_out, cfg.eval_batch_size)
        fixed_on = held_out.source
    target = float(cfg.threshold.target)
    return {
        "mode": mode,
        "value": threshold_for_sensitivity(labels, probs, target),
        "target_sensitivity": target,
        "positive_class": trained.classes[-1],
        "fixed_on": fixed_on,
    }


def _write_outputs(
    run_dir: Path,
    metrics: dict[str, Any],
    data: LabelledSet,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: tuple[str, ...],
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    test = metrics["test"]
    if test["auc"] is not None and math.isfinite(test["auc"]):
        plots.plot_roc(labels, probs, test["auc"], run_dir / "roc.png")
    plots.plot_calibration(metrics["calibration"], run_dir / "calibration.png")
    plots.plot_confusion(test["confusion_matrix"], classes, run_dir / "confusion_matrix.png")
    preds = predict_classes(probs, metrics["threshold"]["value"])
    write_predictions(run_dir / PREDICTIONS_FILE, data.names, labels, probs, preds, classes)
    write_json(metrics, run_dir / METRICS_FILE)


def write_predictions(
    path: Path,
    names: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    preds: np.ndarray,
    classes: tuple[str, ...],
) -> Path:
    """One row per image: its path, true class, the positive (last) class's probability
    (for more than two classes, the predicted class's) and the predicted class."""
    shown = probs[:, -1] if probs.shape[1] == 2 else probs[np.arange(len(preds)), preds]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "probability", "prediction"])
        for name, label, p, pred in zip(names, labels, shown, preds, strict=True):
            writer.writerow([printable(name), classes[label], repr(float(p)), classes[pred]])
    return path
