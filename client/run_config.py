"""The run's composed config as a site sees it (light: every message needs it).

In a deployment every message runs in its own process, and composing the config with Hydra
was the largest part of a key stage's process. A deployed site therefore keeps the composed
config in its state folder (``<state-dir>/config-cache/``), keyed by the run's overrides,
every file of ``conf/`` and the Hydra and OmegaConf versions: a changed override, config
file or library composes anew. The config holds settings, never data, so the file is
no more sensitive than the run config the coordinator sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import hydra
import omegaconf
from flwr.app import Context
from omegaconf import DictConfig, OmegaConf

from task.config import compose_config, overrides_from_run_config, register_resolvers
from task.constants import REPO_ROOT
from task.federation.node import STATE_DIR
from task.runtime.atomic import write_text_atomic

log = logging.getLogger(__name__)

#: The folder under a site's state-dir that holds its composed configs.
CONFIG_CACHE = "config-cache"


def config_key(overrides: Sequence[str], conf_dir: Path) -> str:
    """What a composed config depends on, hashed: the overrides, every file under
    ``conf_dir`` (path and content) and the versions of Hydra and OmegaConf."""
    digest = hashlib.sha256()
    head = [list(overrides), hydra.__version__, omegaconf.__version__]
    digest.update(json.dumps(head).encode())
    for path in sorted(p for p in conf_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(conf_dir)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@cache
def composed(overrides: tuple[str, ...], cache_dir: Path | None = None) -> DictConfig:
    """The config for ``overrides``, composed once per process, and with ``cache_dir`` once
    per site until something it depends on changes (:func:`config_key`)."""
    if cache_dir is None:
        return compose_config(overrides)
    # JSON, not YAML: PyYAML's pure-Python parser is slow enough to show in every message.
    path = cache_dir / f"{config_key(overrides, REPO_ROOT / 'conf')}.json"
    if path.is_file():
        register_resolvers()
        try:
            cfg = OmegaConf.create(json.loads(path.read_text()))
        except (OSError, ValueError, omegaconf.errors.OmegaConfBaseException) as err:
            log.warning("composed config %s is unreadable (%s); composing anew", path, err)
        else:
            if isinstance(cfg, DictConfig):
                OmegaConf.set_struct(cfg, True)  # as Hydra's: a misspelt key fails
                return cfg
            log.warning("composed config %s is not a mapping; composing anew", path)
    cfg = compose_config(overrides)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(OmegaConf.to_container(cfg, resolve=False)), path)
    return cfg


def site_config_cache(node_config: Mapping[str, Any]) -> Path | None:
    """The composed-config folder of a deployed site (one with a ``state-dir``), else None."""
    state = node_config.get(STATE_DIR)
    return Path(str(state)) / CONFIG_CACHE if state else None


def run_overrides(context: Context, overrides: Sequence[str] | None) -> tuple[str, ...]:
    """The app's overrides, or (deployment) those of the run config."""
    if overrides is None:
        overrides = overrides_from_run_config(context.run_config)
    return tuple(overrides)


def run_source(
    context: Context, overrides: Sequence[str] | None
) -> tuple[tuple[str, ...], Path | None]:
    """:func:`composed`'s arguments for this run: its overrides and, for a deployed site
    (``overrides=None``: they come from the run config), its composed-config folder."""
    cache_dir = site_config_cache(context.node_config) if overrides is None else None
    return run_overrides(context, overrides), cache_dir


def run_config(context: Context, overrides: Sequence[str] | None) -> DictConfig:
    """The composed config of the run ``context`` belongs to."""
    return composed(*run_source(context, overrides))
