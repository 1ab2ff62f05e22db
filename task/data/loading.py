"""A run's data from its config, through the preprocessed-data cache where the source keeps
one (Flower-free).

Why one function: centralised training, the simulated federation (its sites and its
server's test set), the audit and a deployed site all read data, and each used to decode
and preprocess every image of a folder source on every start. A site at clinical
resolution decodes hundreds of DICOMs per second at best; through the cache
(:mod:`task.data.cache`) only the first load decodes, and later loads memory-map the
stored arrays, so the GPU waits for decoding only once.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from task.data.cache import SiteDataCache
from task.data.splits import DataSplits

#: Where the cache lies says nothing about the arrays, so it is left out of the key.
_NOT_IN_KEY = ("cache_dir",)


def load_data(data_cfg: DictConfig, preprocess_cfg: DictConfig) -> DataSplits:
    """The splits of the data source ``data_cfg`` (a ``_target_`` config) preprocessed by
    ``preprocess_cfg``: from the source's cache when it keeps one (``cache_place``) and the
    entry for the current files and settings is there, else decoded (and stored)."""
    source = instantiate(data_cfg)
    preprocess = instantiate(preprocess_cfg)
    place = source.cache_place()
    if place is None:
        return source.load(preprocess=preprocess)
    folder, roots = place
    return SiteDataCache(folder).load(
        roots,
        cache_key_text(data_cfg, preprocess_cfg),
        lambda: source.load(preprocess=preprocess),
    )


def cache_key_text(data_cfg: DictConfig, preprocess_cfg: DictConfig) -> str:
    """The settings that change the arrays, the split or the load report, as text: the data
    source's (class list, resolution, channels, ``on_bad_file``, validation fraction and
    seed) and the preprocessing's."""
    data = OmegaConf.to_container(data_cfg, resolve=True)
    source = {k: v for k, v in data.items() if k not in _NOT_IN_KEY}
    preprocess = OmegaConf.to_container(preprocess_cfg, resolve=True)
    return OmegaConf.to_yaml({"source": source, "preprocess": preprocess})
