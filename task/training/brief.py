"""A briefly trained checkpoint: weights, BatchNorm statistics and inference config as
after real training, for serving tests, benchmarks and the audit's model inversion."""

from __future__ import annotations

from pathlib import Path

from task.config import compose_config
from task.constants import CHECKPOINT_FINAL
from task.training.central import run


def brief_checkpoint(model: str, steps: int, run_dir: Path, device: str = "cpu") -> Path:
    """Train the ``model`` option for ``steps`` steps with :func:`run` (one epoch, no
    logger, no bootstrap) on ``device`` and return its ``final.pt``: weights and BatchNorm
    statistics as after training, with the inference config, for serving tests and
    benchmarks. The CPU by default: tests and benchmarks compare its numbers across
    machines."""
    cfg = compose_config(
        [
            "logger=none",
            f"device={device}",
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
