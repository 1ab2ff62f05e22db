"""Centralised training: the baseline that federated training is measured against.

Flower-free. ``fit`` trains with checkpoints (best by validation MCC, as PriMIA selected;
last; with ``train.selection=last`` also the final evaluated weights), optional early
stopping, and exact resume from ``last.pt`` (weights, optimizer, scheduler, epoch, history
and random states). ``run`` wires a composed Hydra config to it.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from monai.transforms import Randomizable
from monai.utils import set_determinism
from omegaconf import DictConfig, OmegaConf
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from task.config import compose_config
from task.constants import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LAST,
    PROGRESS_LOGGER,
    SELECTIONS,
)
from task.data.splits import DataSplits
from task.evaluation.metrics import clinical_metrics
from task.evaluation.report import comparison_line, write_run_outputs
from task.models.factory import build_model, count_parameters
from task.runtime import checkpoint
from task.training.engine import class_weights, mean_loss, predict, train_epoch

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)


@dataclass
class TrainSettings:
    """Settings of the centralised loop (the ``train`` block of the config)."""

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    early_stopping_patience: int | None = None
    max_steps_per_epoch: int | None = None
    class_weighted_loss: bool = True
    #: Keep an exponential moving average of the weights (decay per step) and validate,
    #: select and save *it*; None trains and selects the raw weights.
    ema_decay: float | None = None
    #: Which weights are tested and reported: ``best.pt`` (the best validation MCC, as PriMIA
    #: chose; always written) or ``final.pt`` (the last epoch's; with a schedule annealed
    #: to zero and the EMA, the intended end point).
    selection: str = "val_mcc"
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size} must be at least 1")
        if self.selection not in SELECTIONS:
            raise ValueError(f"train.selection={self.selection!r} is not one of {SELECTIONS}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay={self.ema_decay} must be in (0, 1) or null")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(
                f"train.early_stopping_patience={self.early_stopping_patience} must be >= 1"
            )


def _np_state(state: tuple) -> dict[str, Any]:
    """A numpy ``RandomState`` state as tensors, loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _np_tuple(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": _np_state(np.random.get_state()),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_np_tuple(state["numpy"]))
    random.setstate(state["python"])


def _restore(
    resume, model, optimizer, scheduler, train_loader, run_dir: Path, ema=None
) -> dict[str, Any]:
    """Load ``last.pt`` into the live objects (weights, optimizer, scheduler, random states).

    When resuming into a new run directory, the best model so far is copied along, so that
    ``best.pt`` exists there even if no later epoch improves on it.
    """
    state = checkpoint.load(resume)
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    if isinstance(train_loader.dataset, Randomizable):  # per-image augmentation's generator
        loader_rng = np.random.RandomState()
        loader_rng.set_state(_np_tuple(state["loader_rng"]))
        train_loader.dataset.set_random_state(state=loader_rng)
    source_best = Path(resume).with_name(CHECKPOINT_BEST)
    if source_best.is_file() and source_best.resolve() != (run_dir / CHECKPOINT_BEST).resolve():
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.save_atomic(checkpoint.load(source_best), run_dir / CHECKPOINT_BEST)
    return state


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
    n_classes = len(splits.classes)
    weight = class_weights(splits.train.labels, n_classes) if settings.class_weighted_loss else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    train_loader = splits.train.loader(
        settings.batch_size, shuffle=True, augment=augment, num_workers=settings.num_workers
    )
    val_loader = splits.val.loader(settings.eval_batch_size, shuffle=False)
    ema = None
    if settings.ema_decay is not None:
        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True
        )
    # The weights that are validated, selected and saved as best.pt: the average, if kept.
    eval_model = ema.module if ema is not None else model
    history: list[dict[str, Any]] = []
    start_epoch, best_mcc, best_epoch, stale = 1, -float("inf"), 0, 0
    if resume:
        state = _restore(resume, model, optimizer, scheduler, train_loader, run_dir, ema)
        history = list(state["history"])
        start_epoch = state["epoch"] + 1
        best_mcc, best_epoch, stale = state["best_mcc"], state["best_epoch"], state["stale"]
        progress.info("resumed from %s at epoch %d (best MCC %.4f)", resume, start_epoch, best_mcc)

    for epoch in range(start_epoch, settings.epochs + 1):
        t0 = time.perf_counter()
        stats = train_epoch(
            model,
            train_loader,
            optimizer,
            loss_fn,
            max_steps=settings.max_steps_per_epoch,
            progress=settings.progress,
            desc=f"epoch {epoch}/{settings.epochs}",
            on_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
            channels_last=True,
        )
        train_time = time.perf_counter() - t0
        if scheduler is not None:
            scheduler.step()
        probs, labels = predict(eval_model, val_loader)
        val = clinical_metrics(labels, probs, splits.classes, n_bootstrap=0)
        row = {
            "epoch": epoch,
            "train_loss": stats["loss"],
            "train_examples": stats["num_examples"],
            "train_seconds": train_time,
            "train_images_per_s": stats["num_examples"] / train_time,
            "val_loss": mean_loss(probs, labels),
            "val_auc": val["auc"],
            "val_accuracy": val["accuracy"],
            "val_mcc": val["mcc"],
            "lr": optimizer.param_groups[0]["lr"],
        }
        history.append(row)
        if logger is not None:
            logger.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
        progress.info(
            "epoch %d: loss %.4f  val AUC %.4f ACC %.4f MCC %.4f  (%.0f img/s)",
            epoch,
            row["train_loss"],
            val["auc"],
            val["accuracy"],
            val["mcc"],
            row["train_images_per_s"],
        )
        improved = val["mcc"] > best_mcc
        if improved:
            best_mcc, best_epoch, stale = val["mcc"], epoch, 0
        else:
            stale += 1
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "best_mcc": best_mcc,
            "best_epoch": best_epoch,
            "stale": stale,
            "history": history,
            "rng": _rng_state(),
            # Per-image augmentation draws from the dataset's generator; batch augmentation
            # from torch's, which "rng" holds.
            "loader_rng": (
                _np_state(train_loader.dataset.R.get_state())
                if isinstance(train_loader.dataset, Randomizable)
                else None
            ),
            **(extra_state or {}),
        }
        evaluated = {**state, "model": eval_model.state_dict()}
        if improved:
            checkpoint.save_atomic(evaluated, run_dir / CHECKPOINT_BEST)
        if settings.selection == "last":
            checkpoint.save_atomic(evaluated, run_dir / CHECKPOINT_FINAL)
        checkpoint.save_atomic(state, run_dir / CHECKPOINT_LAST)
        patience = settings.early_stopping_patience
        if patience is not None and stale >= patience:
            progress.info("early stopping at epoch %d: no MCC gain for %d epochs", epoch, stale)
            break
    return history


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
    set_determinism(seed=cfg.seed)
    t_start = time.perf_counter()
    source = instantiate(cfg.data)
    splits = source.load(preprocess=instantiate(cfg.transforms.preprocess))
    log.info("data: %s", splits.report.summary())
    model = build_model(cfg.model, splits.in_shape, len(splits.classes))
    log.info("model %s: %d parameters", cfg.model._target_, count_parameters(model))
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer) if cfg.get("scheduler") else None
    augment = instantiate(cfg.transforms.augment) if cfg.transforms.get("augment") else None
    settings = TrainSettings(**cfg.train)
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
        resume=cfg.get("resume"),
        extra_state={"config": inference_config(cfg, splits.classes)},
    )
    train_seconds = sum(h["train_seconds"] for h in history)
    chosen = CHECKPOINT_FINAL if settings.selection == "last" else CHECKPOINT_BEST
    best = checkpoint.load(run_dir / chosen)
    model.load_state_dict(best["model"])
    n_boot, level = cfg.metrics.n_bootstrap, cfg.metrics.ci_level
    val_probs, val_labels = predict(
        model, splits.val.loader(settings.eval_batch_size, shuffle=False)
    )
    test_probs, test_labels = predict(
        model, splits.test.loader(settings.eval_batch_size, shuffle=False)
    )
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
        "wall_seconds": time.perf_counter() - t_start,
    }
    metrics = write_run_outputs(
        run_dir,
        metrics,
        test_labels=test_labels,
        test_probs=test_probs,
        classes=splits.classes,
        history=history,
        curve_keys=("train_loss", "val_loss", "val_auc", "val_mcc"),
        xlabel="epoch",
    )
    logger.finish({f"test/{k}": metrics["test"][k] for k in ("auc", "accuracy", "mcc")})
    progress.info(comparison_line(metrics["test"]))
    if splits.report.n_skipped:
        log.warning("data: %s", splits.report.summary())
    return metrics


def brief_checkpoint(model: str, steps: int, run_dir: Path) -> Path:
    """Train the ``model`` option for ``steps`` steps with :func:`run` (one epoch, no
    logger, no bootstrap) and return its ``final.pt``: weights and BatchNorm statistics as
    after training, with the inference config, for serving tests and benchmarks."""
    cfg = compose_config(
        [
            "logger=none",
            f"model={model}",
            "train.epochs=1",
            f"train.max_steps_per_epoch={steps}",
            "train.progress=false",
            "train.selection=last",
            "metrics.n_bootstrap=0",
        ],
        config_name="train_central",
    )
    run(cfg, run_dir)
    return run_dir / CHECKPOINT_FINAL
