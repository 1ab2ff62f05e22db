"""The federated config's settings, checked once when the config is composed.

Why here: the ServerApp, every ClientApp and ``scripts.train`` compose the same ``conf/``
tree, so a bad value (a misspelt selection, a fraction above one, ``resume=true`` from an
older README) fails with one line naming it before any site is contacted, not rounds later
where the value is first used. Torch-free: a site's key-exchange messages compose the
config too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real
from typing import Any

from omegaconf import DictConfig, OmegaConf

from task.runtime.run_options import check_device, check_selection, resume_path

#: The config key of the update bound, named in every error about it.
MAX_NORM_KEY = "federation.max_update_norm"

#: ``train.precision`` of a site's local training: fp32, or the forward pass in bfloat16.
PRECISIONS = ("fp32", "bf16")
LR_SCHEDULES = ("cosine", "constant")


def validate_max_norm(value: object, *, key: str = MAX_NORM_KEY) -> float | None:
    """The configured bound on an update's L2 norm as a float, or None for no bound.

    A bound that is not a positive finite number is a configuration error, not "no bound":
    it fails here, naming the value, rather than letting every update through (or none).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{key}={value!r} must be a positive number or null")
    bound = float(value)
    if not math.isfinite(bound) or bound <= 0:
        raise ValueError(f"{key}={value!r} must be a positive finite number or null")
    return bound


def _at_least(name: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ValueError(f"federation.{name}={value} must be at least {low}")


def _in_open_unit(name: str, value: float | None, *, upper_closed: bool = False) -> None:
    if value is None:
        return
    if not (0.0 < value <= 1.0 if upper_closed else 0.0 < value < 1.0):
        interval = "(0, 1]" if upper_closed else "(0, 1)"
        raise ValueError(f"federation.{name}={value} must be in {interval}")


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "object": (object,)}


def _check_type(name: str, annotation: str, value: Any) -> None:
    """A value of the annotated type (``T`` or ``T | None``); bools are not numbers here."""
    base, optional = annotation.split(" | ")[0], annotation.endswith("| None")
    if value is None and optional:
        return
    wrong_bool = isinstance(value, bool) and base != "bool"
    if wrong_bool or not isinstance(value, _TYPES[base]):
        kind = f"{base} or null" if optional else base
        raise ValueError(f"federation.{name}={value!r} must be {kind}")


@dataclass(frozen=True)
class FederationSettings:
    """The ``federation`` block of ``conf/train.yaml``; every key is documented there."""

    num_sites: int
    num_rounds: int
    local_epochs: int
    local_steps: int | None
    lr_schedule: str
    fraction_train: float
    fraction_evaluate: float
    min_train_sites: int
    min_evaluate_sites: int
    min_available_sites: int
    site_val_fraction: float
    selection: str
    ema_decay: float | None
    secure_normalisation: bool
    round_timeout: float
    max_update_norm: float | None
    client_cpus: float
    client_gpus: object  # 'auto' or a share: checked by gpu_share

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, str(f.type), getattr(self, f.name))
        for name in ("num_sites", "num_rounds", "local_epochs", "local_steps"):
            _at_least(name, getattr(self, name), 1)
        for name in ("min_train_sites", "min_evaluate_sites", "min_available_sites"):
            _at_least(name, getattr(self, name), 1)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"federation.lr_schedule={self.lr_schedule!r} is not one of {LR_SCHEDULES}"
            )
        _in_open_unit("fraction_train", self.fraction_train, upper_closed=True)
        _in_open_unit("fraction_evaluate", self.fraction_evaluate, upper_closed=True)
        _in_open_unit("site_val_fraction", self.site_val_fraction)
        _in_open_unit("ema_decay", self.ema_decay)
        check_selection(self.selection, "federation.selection")
        for name in ("round_timeout", "client_cpus"):
            if not getattr(self, name) > 0:
                raise ValueError(f"federation.{name}={getattr(self, name)} must be positive")
        validate_max_norm(self.max_update_norm)
        self.gpu_share()

    def gpu_share(self) -> float:
        """A simulated site's share of a GPU where the sites train on CUDA: the configured
        ``client_gpus``, or with ``auto`` 1/num_sites (all sites on one GPU at once)."""
        share = self.client_gpus
        if share == "auto":
            return 1.0 / self.num_sites
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise ValueError(f"federation.client_gpus={share!r} must be 'auto' or in (0, 1]")
        return float(share)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> FederationSettings:
        """The checked ``cfg.federation``; an unknown or missing key is named."""
        block = OmegaConf.to_container(cfg.federation, resolve=True)
        expected = {f.name for f in fields(cls)}
        unknown, missing = set(block) - expected, expected - set(block)
        if unknown or missing:
            raise ValueError(
                f"federation: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
            )
        return cls(**block)


def check_federated_config(cfg: DictConfig) -> FederationSettings:
    """Check the federated config's settings (the ``federation`` block, the site's
    precision and device, ``resume``) and return the federation's; a ``ValueError`` names
    the key."""
    check_device(cfg.device)
    precision = cfg.train.precision
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r} is not one of {PRECISIONS}")
    resume_path(cfg.get("resume"))
    return FederationSettings.from_config(cfg)
