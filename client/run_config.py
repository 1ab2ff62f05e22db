"""The run's composed config as a site sees it (light: every message needs it)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from flwr.app import Context
from omegaconf import DictConfig

from task.config import compose_config, overrides_from_run_config


@cache
def composed(overrides: tuple[str, ...]) -> DictConfig:
    """The config for ``overrides``, composed once per process."""
    return compose_config(overrides)


def run_overrides(context: Context, overrides: Sequence[str] | None) -> tuple[str, ...]:
    """The app's overrides, or (deployment) those of the run config."""
    if overrides is None:
        overrides = overrides_from_run_config(context.run_config)
    return tuple(overrides)


def run_config(context: Context, overrides: Sequence[str] | None) -> DictConfig:
    """The composed config of the run ``context`` belongs to."""
    return composed(run_overrides(context, overrides))
