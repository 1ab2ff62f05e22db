"""Compose the Hydra config outside ``@hydra.main`` (Flower apps, benchmarks, tests).

Hydra is the one source of configuration: the ServerApp and every ClientApp compose the
same ``conf/`` tree with the same overrides, which reach them either directly (simulation)
or as one flat ``overrides`` string in Flower's run config (deployment).
"""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from task.constants import REPO_ROOT
from task.federation.settings import check_federated_config

# Hydra imports every installed sweeper plugin when it composes; Optuna's (used only by
# the hparams_search sweeps) warns about a SQLAlchemy 2.0 rename on import, in every site
# process of a run.
warnings.filterwarnings(
    "ignore", message=r"The ``declarative_base\(\)`` function", module=r"optuna\."
)

#: Flat run-config keys the Flower apps read.
RUN_CONFIG_OVERRIDES = "overrides"
RUN_CONFIG_EXPERIMENT = "experiment"


def register_resolvers() -> None:
    """``${scale:RES,FRACTION}`` -> ``round(RES * FRACTION)`` (pixels from a fraction)."""
    if not OmegaConf.has_resolver("scale"):
        OmegaConf.register_new_resolver("scale", lambda res, frac: round(float(res) * float(frac)))


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides; misspelt keys fail here, and
    so do bad federation settings (:func:`task.federation.settings.check_federated_config`)."""
    register_resolvers()
    if GlobalHydra.instance().is_initialized():  # inside @hydra.main: reuse its search path
        cfg = compose(config_name=config_name, overrides=list(overrides))
    else:
        with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
    if config_name == "train":
        check_federated_config(cfg)
    return cfg


def default_choice(group: str, config_name: str = "train") -> str:
    """The option of ``group`` that ``conf/<config_name>.yaml`` selects by default."""
    for entry in OmegaConf.load(REPO_ROOT / "conf" / f"{config_name}.yaml").defaults:
        if not isinstance(entry, str) and group in entry:
            return str(entry[group])
    raise ValueError(f"conf/{config_name}.yaml selects no '{group}'")


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """Hydra overrides from Flower's flat run config (``experiment`` and ``overrides``)."""
    unknown = set(run_config) - {RUN_CONFIG_OVERRIDES, RUN_CONFIG_EXPERIMENT}
    if unknown:
        raise ValueError(
            f"run config keys {sorted(unknown)} are not used; put settings in "
            f"'{RUN_CONFIG_OVERRIDES}' as Hydra overrides"
        )
    out = []
    experiment = str(run_config.get(RUN_CONFIG_EXPERIMENT, "") or "")
    if experiment:
        out.append(f"experiment={experiment}")
    out.extend(shlex.split(str(run_config.get(RUN_CONFIG_OVERRIDES, "") or "")))
    return out


def with_normalisation(cfg: DictConfig, mean: float, std: float) -> DictConfig:
    """A copy of ``cfg`` whose intensity normalisation uses ``mean`` and ``std``."""
    if not std > 0:
        raise ValueError(f"intensity std {std} must be positive")
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.update(out, "transforms.norm_mean", float(mean))
    OmegaConf.update(out, "transforms.norm_std", float(std))
    return out


def config_targets(node: Any) -> Iterator[str]:
    """Every ``_target_`` a plain (container) config names, at any depth: what Hydra would
    call when it instantiates it, so what a received or loaded config must be checked for."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield str(value)
            else:
                yield from config_targets(value)
    elif isinstance(node, list):
        for item in node:
            yield from config_targets(item)
