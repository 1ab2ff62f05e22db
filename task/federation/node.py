"""A site's node config (Flower-free, and free of torch, MONAI and the images).

What every message of a site needs to know about it: its name and its state folder. The
key-exchange messages of secure aggregation use only this, so their processes never import
the data stack (:mod:`task.data.sites` loads the images).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

#: Node-config keys. Flower's simulation sets the first two; a deployment sets the others.
PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"
SITE_NAME, DATA_PATH = "site-name", "data-path"
#: Node-config key of the folder where a site keeps what must outlive its process (its
#: privacy ledger). Simulation: ``<run_dir>/sites/<site>``.
STATE_DIR = "state-dir"
#: Node-config key of the device a site trains and evaluates on; without it, the run's
#: ``device``. Why the site's: which GPU a hospital's host has is the hospital's to say.
DEVICE = "device"


def site_name(node_config: Mapping[str, Any]) -> str:
    """This node's site name, without loading its data (:func:`load_site` uses it too)."""
    if SITE_NAME in node_config:
        return str(node_config[SITE_NAME])
    if DATA_PATH in node_config:
        return str(node_config[DATA_PATH])
    if PARTITION_ID in node_config:
        return f"site-{int(node_config[PARTITION_ID])}"
    raise ValueError(f"node config {dict(node_config)} names no site: set '{SITE_NAME}'")


def site_device(cfg: DictConfig, node_config: Mapping[str, Any]) -> tuple[str, str]:
    """This site's ``device`` and where it was set (for errors): its node config's
    ``device``, else the run config's."""
    if DEVICE in node_config:
        return str(node_config[DEVICE]), f"node config {DEVICE}"
    return str(cfg.device), "device"


def site_state_dir(cfg: DictConfig, node_config: Mapping[str, Any]) -> Path:
    """This site's state folder: ``state-dir`` from its node config, else (simulation)
    ``<run_dir>/sites/<site>``."""
    if STATE_DIR in node_config:
        return Path(str(node_config[STATE_DIR]))
    if cfg.get("run_dir"):
        return Path(str(cfg.run_dir)) / "sites" / site_name(node_config)
    raise ValueError(
        f"node config {dict(node_config)} has no '{STATE_DIR}' and the run has no run_dir: "
        "the site has nowhere to keep its privacy ledger"
    )
