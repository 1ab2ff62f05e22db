"""Experiment loggers: wandb (offline by default) or none. Selected by the ``logger`` group."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class NullLogger:
    """Logs nothing (``logger=none``)."""

    def start(self, run_dir: Path, config: dict[str, Any], name: str | None = None) -> None:
        """Begin a run; nothing to do."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Drop the metrics."""

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """End the run; nothing to do."""


class WandbLogger(NullLogger):
    """Weights & Biases, offline unless ``mode="online"`` (then the user's login is used).

    Offline runs land in ``<run_dir>/wandb`` and can be uploaded later with ``wandb sync``.
    """

    def __init__(
        self,
        project: str = "primia-flower",
        mode: str = "offline",
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb mode {mode!r} must be offline, online or disabled")
        self.project, self.mode, self.group = project, mode, group
        self.tags = list(tags or [])
        self._run = None

    def start(self, run_dir: Path, config: dict[str, Any], name: str | None = None) -> None:
        import wandb  # lazy: importing wandb is slow and only this logger needs it

        os.environ.setdefault("WANDB_SILENT", "true")
        self._run = wandb.init(
            project=self.project,
            mode=self.mode,
            group=self.group,
            tags=self.tags,
            name=name,
            dir=str(run_dir),
            config=config,
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._run is not None:
            self._run.log(metrics, step=step)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self._run is None:
            return
        for key, value in (summary or {}).items():
            self._run.summary[key] = value
        self._run.finish()
        self._run = None
