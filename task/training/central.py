"""Centralised training: the baseline that federated training is measured against.

Flower-free. ``fit`` trains with checkpoints (best by validation MCC, as PriMIA selected;
last; with ``selection=last`` the final evaluated weights), optional early stopping, and
exact resume from ``last.pt`` (:mod:`task.training.resume`). ``run`` wires a config to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from task.constants import CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LAST, PROGRESS_LOGGER
from task.data.loading import load_data
from task.data.splits import DataSplits
from task.evaluation.metrics import clinical_metrics
from task.evaluation.reference import comparison_line
from task.evaluation.report import write_run_outputs
from task.models.factory import build_model, count_parameters
from task.runtime import checkpoint
from task.runtime.device import (
    configure_backends,
    loader_options,
    model_device,
    prepare_model,
    resolve_device,
)
from task.runtime.run_options import resume_path
from task.training.engine import class_weights, mean_loss, predict, train_epoch
from task.training.resume import Progress, checkpoint_state, restore
from task.training.settings import TrainSettings

__all__ = ["TrainSettings", "fit", "inference_config", "run"]

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)


@dataclass
class _Loop:
    """What one ``fit`` trains and validates with, built once by :func:`_set_up`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module
    train_loader: Any
    val_loader: Any
    ema: AveragedModel | None
    #: The weights that are validated, selected and saved as best.pt: the average, if kept.
    eval_model: torch.nn.Module


def fit(
    model: torch.nn.Module,
    splits: DataSplits,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    run_dir: Path,
    *,
    augment=None,
    scheduler=None,
    logger=None,
    resume: str | Path | None = None,
    extra_state: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` and return the per-epoch history; best weights end in ``best.pt``."""
    loop = _set_up(model, splits, optimizer, settings, augment, scheduler)
    done = _resume(loop, resume, run_dir) if resume else Progress()
    for epoch in range(done.start_epoch, settings.epochs + 1):
        row = _train_and_validate(loop, epoch, splits.classes, settings)
        improved = done.record(row)
        _report(row, logger)
        _save_checkpoints(loop, done, epoch, improved, settings, run_dir, extra_state)
        patience = settings.early_stopping_patience
        if patience is not None and done.stale >= patience:
            progress.info(
                "early stopping at epoch %d: no MCC gain for %d epochs", epoch, done.stale
            )
            break
    return done.history


def _set_up(model, splits: DataSplits, optimizer, settings: TrainSettings, augment, scheduler):
    """The loss, the loaders and, with ``ema_decay``, the averaged copy of the weights."""
    n_classes = len(splits.classes)
    weight = class_weights(splits.train.labels, n_classes) if settings.class_weighted_loss else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    feed = loader_options(model_device(model), settings.num_workers)
    train_loader = splits.train.loader(settings.batch_size, shuffle=True, augment=augment, **feed)
    val_loader = splits.val.loader(settings.eval_batch_size, shuffle=False, **feed)
    ema = None
    if settings.ema_decay is not None:
        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True
        )
    eval_model = ema.module if ema is not None else model
    return _Loop(model, optimizer, scheduler, loss_fn, train_loader, val_loader, ema, eval_model)


def _resume(loop: _Loop, resume: str | Path, run_dir: Path) -> Progress:
    """Load ``last.pt`` into the loop's objects; where the interrupted run stood."""
    state = restore(
        resume, loop.model, loop.optimizer, loop.scheduler, loop.train_loader, run_dir, loop.ema
    )
    done = Progress.of(state)
    progress.info(
        "resumed from %s at epoch %d (best MCC %.4f)", resume, done.start_epoch, done.best_mcc
    )
    return done


def _train_and_validate(
    loop: _Loop, epoch: int, classes: tuple[str, ...], settings: TrainSettings
) -> dict[str, Any]:
    """One epoch of training, the scheduler's step, and validation: the history's row."""
    model, ema = loop.model, loop.ema
    t0 = time.perf_counter()
    stats = train_epoch(
        model,
        loop.train_loader,
        loop.optimizer,
        loop.loss_fn,
        max_steps=settings.max_steps_per_epoch,
        progress=settings.progress,
        desc=f"epoch {epoch}/{settings.epochs}",
        on_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
        channels_last=True,
    )
    train_time = time.perf_counter() - t0
    if loop.scheduler is not None:
        loop.scheduler.step()
    probs, labels = predict(loop.eval_model, loop.val_loader)
    val = clinical_metrics(labels, probs, classes, n_bootstrap=0)
    return {
        "epoch": epoch,
        "train_loss": stats["loss"],
        "train_examples": stats["num_examples"],
        "train_seconds": train_time,
        "train_images_per_s": stats["num_examples"] / train_time,
        "val_loss": mean_loss(probs, labels),
        "val_auc": val["auc"],
        "val_accuracy": val["accuracy"],
        "val_mcc": val["mcc"],
        "lr": loop.optimizer.param_groups[0]["lr"],
    }


def _report(row: dict[str, Any], logger) -> None:
    """The epoch's row to the experiment logger, and a line to the person watching."""
    if logger is not None:
        logger.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    progress.info(
        "epoch %d: loss %.4f  val AUC %.4f ACC %.4f MCC %.4f  (%.0f img/s)",
        row["epoch"],
        row["train_loss"],
        row["val_auc"],
        row["val_accuracy"],
        row["val_mcc"],
        row["train_images_per_s"],
    )


def _save_checkpoints(
    loop: _Loop,
    done: Progress,
    epoch: int,
    improved: bool,
    settings: TrainSettings,
    run_dir: Path,
    extra_state: dict[str, Any] | None,
) -> None:
    """``last.pt`` every epoch; the evaluated weights as ``best.pt`` on a new best MCC (and
    as ``final.pt`` with ``selection=last``)."""
    state = checkpoint_state(
        model=loop.model,
        ema=loop.ema,
        optimizer=loop.optimizer,
        scheduler=loop.scheduler,
        train_loader=loop.train_loader,
        epoch=epoch,
        done=done,
        extra_state=extra_state,
    )
    evaluated = {**state, "model": loop.eval_model.state_dict()}
    if improved:
        checkpoint.save_atomic(evaluated, run_dir / CHECKPOINT_BEST)
    if settings.selection == "last":
        checkpoint.save_atomic(evaluated, run_dir / CHECKPOINT_FINAL)
    checkpoint.save_atomic(state, run_dir / CHECKPOINT_LAST)


def inference_config(cfg: DictConfig, classes: tuple[str, ...]) -> dict[str, Any]:
    """What a checkpoint must carry to rebuild the model and its exact preprocessing."""
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "preprocess": OmegaConf.to_container(cfg.transforms.preprocess, resolve=True),
        "classes": list(classes),
        "resolution": int(cfg.data.resolution),
        "channels": int(cfg.data.get("channels", 1)),
    }


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Centralised training and test evaluation from a composed config; returns metrics."""
    device = resolve_device(cfg.device)
    set_determinism(seed=cfg.seed)
    configure_backends(device)  # after set_determinism, which turns cuDNN's autotuner off
    log.info("device: %s", device)
    t_start = time.perf_counter()
    splits, model, optimizer, scheduler, augment, settings = _build(cfg, device)
    logger = instantiate(cfg.logger)
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=cfg.get("run_name"))
    history = fit(
        model,
        splits,
        optimizer,
        settings,
        run_dir,
        augment=augment,
        scheduler=scheduler,
        logger=logger,
        resume=resume_path(cfg.get("resume")),
        extra_state={"config": inference_config(cfg, splits.classes)},
    )
    metrics, test_labels, test_probs = _evaluate(cfg, model, splits, settings, history, run_dir)
    metrics["wall_seconds"] = time.perf_counter() - t_start
    metrics = write_run_outputs(
        run_dir,
        metrics,
        test_labels=test_labels,
        test_probs=test_probs,
        classes=splits.classes,
        history=history,
        curve_keys=("train_loss", "val_loss", "val_auc", "val_mcc"),
        xlabel="epoch",
        test_fingerprint=splits.test.fingerprint,
    )
    logger.finish({f"test/{k}": metrics["test"][k] for k in ("auc", "accuracy", "mcc")})
    progress.info(comparison_line(metrics["test"], splits.test.fingerprint))
    if splits.report.n_skipped:
        log.warning("data: %s", splits.report.summary())
    return metrics


def _build(cfg: DictConfig, device: torch.device) -> tuple:
    """Data, model (on ``device``), optimizer, scheduler, augmentation and loop settings."""
    splits = load_data(cfg.data, cfg.transforms.preprocess)
    log.info("data: %s", splits.report.summary())
    model = prepare_model(build_model(cfg.model, splits.in_shape, len(splits.classes)), device)
    log.info("model %s: %d parameters", cfg.model._target_, count_parameters(model))
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer) if cfg.get("scheduler") else None
    augment = instantiate(cfg.transforms.augment) if cfg.transforms.get("augment") else None
    return splits, model, optimizer, scheduler, augment, TrainSettings(**cfg.train)


def _evaluate(
    cfg: DictConfig,
    model: torch.nn.Module,
    splits: DataSplits,
    settings: TrainSettings,
    history: list[dict[str, Any]],
    run_dir: Path,
) -> tuple[dict[str, Any], Any, Any]:
    """The reported checkpoint's metrics (but ``wall_seconds``), test labels and scores."""
    train_seconds = sum(h["train_seconds"] for h in history)
    chosen = CHECKPOINT_FINAL if settings.selection == "last" else CHECKPOINT_BEST
    best = checkpoint.load(run_dir / chosen)
    model.load_state_dict(best["model"])
    n_boot, level = cfg.metrics.n_bootstrap, cfg.metrics.ci_level
    loader = splits.val.loader(settings.eval_batch_size, shuffle=False)
    val_probs, val_labels = predict(model, loader)
    loader = splits.test.loader(settings.eval_batch_size, shuffle=False)
    test_probs, test_labels = predict(model, loader)
    metrics = {
        "test": clinical_metrics(
            test_labels, test_probs, splits.classes, n_bootstrap=n_boot, level=level, seed=cfg.seed
        ),
        "val": clinical_metrics(val_labels, val_probs, splits.classes, n_bootstrap=0),
        "best_epoch": best["best_epoch"],
        "reported_checkpoint": chosen,
        "reported_epoch": best["epoch"],
        "epochs_run": len(history),
        "model": {"target": cfg.model._target_, "parameters": count_parameters(model)},
        "data": splits.report.to_dict(),
        "seed": cfg.seed,
        "train_seconds": train_seconds,
        "train_images_per_s": sum(h["train_examples"] for h in history) / train_seconds,
    }
    return metrics, test_labels, test_probs
