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

from task.data.loading import load_data
from task.data.splits import DataSplits, Split
from task.federation.node import (  # also re-exported: the node config's keys and helpers
    DATA_PATH,
    NUM_PARTITIONS,
    PARTITION_ID,
    SITE_NAME,
    STATE_DIR,
    site_name,
    site_state_dir,
)

log = logging.getLogger(__name__)

#: Folder, inside a deployed site's state folder, of its preprocessed data cache.
DATA_CACHE_DIR = "data-cache"


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
    return load_data(OmegaConf.create(data_yaml), OmegaConf.create(preprocess_yaml))


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


def reading_settings(cfg: DictConfig, data_path: str) -> dict[str, Any]:
    """How a deployed site reads ``data_path``: the run's data config (class list,
    resolution, channels, ``on_bad_file``) on the site's own folder or CSV. Shared with the
    site's readiness check (``scripts.check_site``), so that it reads what training reads."""
    return {
        "train": data_path,
        "classes": list(cfg.data.classes),
        "resolution": cfg.data.resolution,
        "channels": cfg.data.get("channels", 1),
        "on_bad_file": cfg.data.get("on_bad_file", "error"),
    }


def folder_site(
    cfg: DictConfig, name: str, index: int, data_path: str, cache_dir: Path | None = None
) -> Site:
    """A deployed site reading its own ``<data_path>/<class>/*`` images.

    With ``cache_dir`` the decoded, preprocessed splits are kept there
    (:class:`~task.data.cache.SiteDataCache`): a SuperNode starts a process per message,
    and each would otherwise decode the whole folder again.
    """
    if cache_dir is not None and Path(cache_dir).resolve().is_relative_to(
        Path(data_path).resolve()
    ):  # said in the node config's words (the source's own check names data.cache_dir)
        raise ValueError(
            f"node config: {STATE_DIR} {Path(cache_dir).parent} lies inside {DATA_PATH} "
            f"{data_path}; keep the site's state outside its image folder"
        )
    source = {
        "_target_": "task.data.folder.ImageFolderSource",
        **reading_settings(cfg, data_path),
        "val_fraction": cfg.federation.site_val_fraction,
        "seed": cfg.seed,
        "cache_dir": None if cache_dir is None else str(cache_dir),
    }
    splits = load_data(OmegaConf.create(source), cfg.transforms.preprocess)
    if splits.report.n_skipped:
        log.warning("site %s: %s", name, splits.report.summary())
    return Site(name, index, splits)


@cache
def _cached_site(cfg_yaml: str, node_items: tuple[tuple[str, Any], ...]) -> Site:
    cfg = OmegaConf.create(cfg_yaml)
    node = dict(node_items)
    if DATA_PATH in node:
        cache_dir = site_state_dir(cfg, node) / DATA_CACHE_DIR if STATE_DIR in node else None
        return folder_site(
            cfg, site_name(node), int(node.get(PARTITION_ID, 0)), str(node[DATA_PATH]), cache_dir
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
    """The site for this node, loaded once per process and then reused every round. A
    deployed site (``data-path``) with a ``state-dir`` also keeps its decoded images on its
    disk, in ``<state-dir>/data-cache``, for the processes of its later messages."""
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    return _cached_site(cfg_yaml, tuple(sorted(node_config.items())))
