"""A site's data, from its node config (Flower-free).

In simulation a site is a partition of PneumoniaMNIST (train + val pooled, then split across
sites by the configured partitioner; the published test split stays with the server). In a
deployment a site reads its own folder (``data-path`` in the SuperNode's node config) with
the configured class list. Either way the site splits its own part into train and
validation, stratified, from the run's seed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from task.data.folder import ImageFolderSource
from task.data.splits import DataSplits, Split

log = logging.getLogger(__name__)

#: Node-config keys. Flower's simulation sets the first two; a deployment sets the others.
PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"
SITE_NAME, DATA_PATH = "site-name", "data-path"
#: Node-config key of the folder where a site keeps what must outlive its process (its
#: privacy ledger). Simulation: ``<run_dir>/sites/<site>``.
STATE_DIR = "state-dir"


@dataclass
class Site:
    """One hospital: its name and its local train / validation splits."""

    name: str
    index: int
    splits: DataSplits


@cache
def _bundled_data(data_yaml: str, preprocess_yaml: str) -> DataSplits:
    """The bundled data set, loaded and preprocessed once per process for its config.

    Why: simulated sites share one process (Flower's simulation runs them in one actor here),
    and each used to load and preprocess the whole file for its own partition.
    """
    source = instantiate(OmegaConf.create(data_yaml))
    return source.load(preprocess=instantiate(OmegaConf.create(preprocess_yaml)))


def partition_site(cfg: DictConfig, partition_id: int, num_partitions: int) -> Site:
    """The ``partition_id``-th simulated site of the bundled data set."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside 0..{num_partitions - 1}")
    data = _bundled_data(
        OmegaConf.to_yaml(cfg.data, resolve=True),
        OmegaConf.to_yaml(cfg.transforms.preprocess, resolve=True),
    )
    pool = Split(
        np.concatenate([data.train.images, data.val.images]),
        np.concatenate([data.train.labels, data.val.labels]),
    )
    parts = instantiate(cfg.partition)(pool.labels, num_partitions, seed=cfg.seed)
    train, val = pool.subset(parts[partition_id]).stratified_split(
        cfg.federation.site_val_fraction, cfg.seed
    )
    empty = Split(pool.images[:0], pool.labels[:0])
    splits = DataSplits(data.classes, train, val, empty, data.report)
    return Site(f"site-{partition_id}", partition_id, splits)


def folder_site(cfg: DictConfig, name: str, index: int, data_path: str) -> Site:
    """A deployed site reading its own ``<data_path>/<class>/*`` images."""
    source = ImageFolderSource(
        train=data_path,
        classes=list(cfg.data.classes),
        resolution=cfg.data.resolution,
        channels=cfg.data.get("channels", 1),
        val_fraction=cfg.federation.site_val_fraction,
        seed=cfg.seed,
        on_bad_file=cfg.data.get("on_bad_file", "error"),
    )
    splits = source.load(preprocess=instantiate(cfg.transforms.preprocess))
    if splits.report.n_skipped:
        log.warning("site %s: %s", name, splits.report.summary())
    return Site(name, index, splits)


def site_name(node_config: Mapping[str, Any]) -> str:
    """This node's site name, without loading its data (:func:`load_site` uses it too)."""
    if SITE_NAME in node_config:
        return str(node_config[SITE_NAME])
    if DATA_PATH in node_config:
        return str(node_config[DATA_PATH])
    if PARTITION_ID in node_config:
        return f"site-{int(node_config[PARTITION_ID])}"
    raise ValueError(f"node config {dict(node_config)} names no site: set '{SITE_NAME}'")


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


@cache
def _cached_site(cfg_yaml: str, node_items: tuple[tuple[str, Any], ...]) -> Site:
    cfg = OmegaConf.create(cfg_yaml)
    node = dict(node_items)
    if DATA_PATH in node:
        return folder_site(
            cfg, site_name(node), int(node.get(PARTITION_ID, 0)), str(node[DATA_PATH])
        )
    if PARTITION_ID in node and NUM_PARTITIONS in node:
        site = partition_site(cfg, int(node[PARTITION_ID]), int(node[NUM_PARTITIONS]))
        site.name = site_name(node)
        return site
    raise ValueError(
        f"node config {node} names no data: set '{DATA_PATH}' (and '{SITE_NAME}') with "
        f"--node-config, or run in simulation (which sets '{PARTITION_ID}')"
    )


def load_site(cfg: DictConfig, node_config: Mapping[str, Any]) -> Site:
    """The site for this node, loaded once per process and then reused every round."""
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    return _cached_site(cfg_yaml, tuple(sorted(node_config.items())))
