"""The end of a federation: test the selected round on the server's test split and write
``metrics.json``, ``history.json``, the plots, ``report.html`` and the dashboard's summary."""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig

from server.recorder import RoundRecorder, flat_row
from strategies.checkpointed import CheckpointedStrategy
from task.constants import CHECKPOINT_FINAL
from task.evaluation.html_report import write_html_report
from task.evaluation.metrics import clinical_metrics
from task.evaluation.reference import comparison_line
from task.evaluation.report import write_run_outputs
from task.models.factory import count_parameters
from task.runtime import checkpoint
from task.training.engine import predict

log = logging.getLogger(__name__)


def final_report(
    cfg: DictConfig,
    run,
    recorder: RoundRecorder,
    strategy: CheckpointedStrategy,
    model,
    data,
    stats: dict[str, float] | None,
    logger,
    *,
    rounds_seconds: float,
    t_start: float,
) -> dict[str, Any]:
    """Test the round ``run.selection`` names (written as ``final.pt`` for ``last``),
    write the run's outputs and return its metrics."""
    tested_round, tested_arrays = recorder.tested(run.selection)
    if run.selection == "last":
        final = {"model": tested_arrays, "round": tested_round, "config": recorder.model_config}
        checkpoint.save_atomic(final, run.run_dir / CHECKPOINT_FINAL)
    model.load_state_dict(tested_arrays)
    probs, labels = predict(model, data.test.loader(cfg.train.eval_batch_size, shuffle=False))
    test = clinical_metrics(
        labels,
        probs,
        data.classes,
        n_bootstrap=cfg.metrics.n_bootstrap,
        level=cfg.metrics.ci_level,
        seed=cfg.seed,
    )
    metrics = _metrics(cfg, run, recorder, strategy, model, test, tested_round, stats)
    metrics["rounds_seconds"] = rounds_seconds
    metrics["wall_seconds"] = time.perf_counter() - t_start
    metrics = write_run_outputs(
        run.run_dir,
        metrics,
        test_labels=labels,
        test_probs=probs,
        classes=data.classes,
        history=[flat_row(h) for h in recorder.history],
        curve_keys=("train_loss", "val_loss", "val_auc", "val_mcc"),
        xlabel="round",
        test_fingerprint=data.test.fingerprint,
    )
    write_html_report(run.run_dir)
    logger.finish({f"test/{k}": test[k] for k in ("auc", "accuracy", "mcc")})
    log.info(comparison_line(test, data.test.fingerprint))  # the entry point prints its own
    return metrics


def _metrics(
    cfg: DictConfig,
    run,
    recorder: RoundRecorder,
    strategy: CheckpointedStrategy,
    model,
    test: dict[str, Any],
    tested_round: int,
    stats: dict[str, float] | None,
) -> dict[str, Any]:
    """The ``metrics.json`` entries: the test, the tested round's validation and per-site
    figures, what failed or was refused over the run, and the run's settings."""
    history = recorder.history
    tested = next(h for h in history if h["round"] == tested_round)
    return {
        "test": test,
        "val": tested["evaluate"],
        "selection": run.selection,
        "ema_decay": cfg.federation.ema_decay,
        "tested_round": tested_round,
        "best_round": recorder.best_round,
        "rounds_run": len(history),
        "sites": {site: kinds.get("evaluate", {}) for site, kinds in tested["sites"].items()},
        "failures": {
            "train": sum(h["failures"]["train"] for h in history),
            "evaluate": sum(h["failures"]["evaluate"] for h in history),
        },
        # Training replies refused before aggregation (checkpoints older than this key
        # have none recorded).
        "rejected": sum(len(h.get("rejected", {})) for h in history),
        "model": {"target": cfg.model._target_, "parameters": count_parameters(model)},
        "strategy": cfg.strategy._target_,
        "secure": cfg.secure._target_,
        "normalisation": stats,
        "privacy": run.privacy.summary(strategy.stopped),
        "num_sites": cfg.federation.num_sites,
        "seed": cfg.seed,
    }
