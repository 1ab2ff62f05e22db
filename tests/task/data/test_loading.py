"""A run's data through the preprocessed-data cache (task/data/loading.py): centralised
training and the simulated federation of folder sources decode once and then read the cache,
exactly as a deployed site does (tests/task/data/test_cache.py covers the cache itself).

A spy counts the decoder's calls; without the cache every load decodes every file, so the
"decodes nothing" assertions fail (the ``cache_dir=null`` test shows that they can).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from task.config import compose_config
from task.constants import CHECKPOINT_FINAL
from task.data import sites
from task.data.cache import ENTRY_PREFIX
from task.data.loading import load_data
from task.data.splits import DataSplits
from task.runtime import checkpoint
from tests.factories import pattern, write_dicom, write_png

CLASSES = ("normal", "pneumonia")


def _write_split(root: Path, n: int, offset: int) -> Path:
    for c, cls in enumerate(CLASSES):
        for i in range(n):
            img = pattern()
            img[2 + i % 15, 4 + c + i // 15] = 90 + offset + 3 * i + c  # every file different
            write_png(root / cls / f"{i}.png", img)
        write_dicom(root / cls / "scan.dcm", pattern(dtype=np.uint16, high=4000) + offset + c)
    return root


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """Separate train, val and test folders: one cache entry is keyed on all three."""
    return {
        split: _write_split(tmp_path / split, n, 10 * k)
        for k, (split, n) in enumerate([("train", 8), ("val", 3), ("test", 3)])
    }


def _central_cfg(folders: dict[str, Path], cache_dir: Path | None, *extra: str):
    overrides = [
        "data=folder",
        *(f"data.{split}={path}" for split, path in folders.items()),
        "data.resolution=16",
        f"data.cache_dir={'null' if cache_dir is None else cache_dir}",
        "logger=none",
        *extra,
    ]
    return compose_config(overrides, config_name="train_central")


def _same(a: DataSplits, b: DataSplits) -> None:
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.fingerprint == y.fingerprint, split


def test_a_central_folder_source_decodes_once_and_keeps_the_test_fingerprint(
    folders, tmp_path, decodes
) -> None:
    """The test split's content hash survives the cache: it is what recognises the
    published split for the expert comparison (task/evaluation/reference.py)."""
    uncached = load_data(*_parts(_central_cfg(folders, None)))
    n_files = len(decodes)
    assert n_files == 2 * (8 + 3 + 3 + 3) and uncached.test.fingerprint is not None
    cfg = _central_cfg(folders, tmp_path / "cache")
    cold = load_data(*_parts(cfg))
    warm = load_data(*_parts(cfg))
    assert len(decodes) == 2 * n_files  # the cold load decoded, the warm one nothing
    assert not warm.train.images.flags.writeable  # memory-mapped
    _same(cold, uncached)
    _same(warm, uncached)
    assert len(list((tmp_path / "cache").glob(f"{ENTRY_PREFIX}*"))) == 1


def test_without_a_cache_dir_every_load_decodes(folders, decodes) -> None:
    cfg = _central_cfg(folders, None)
    load_data(*_parts(cfg))
    first = len(decodes)
    load_data(*_parts(cfg))
    assert len(decodes) == 2 * first


def test_an_edited_test_image_is_a_miss(folders, tmp_path, decodes) -> None:
    cfg = _central_cfg(folders, tmp_path / "cache")
    before = load_data(*_parts(cfg))
    img = pattern()
    img[0, 0] = 3
    write_png(folders["test"] / "normal" / "0.png", img)
    decodes.clear()
    after = load_data(*_parts(cfg))
    assert len(decodes) == 2 * (8 + 3 + 3 + 3)
    assert after.test.fingerprint != before.test.fingerprint


def test_a_csv_split_is_read_uncached(folders, tmp_path, decodes) -> None:
    csv = tmp_path / "val.csv"
    rows = [
        f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(folders["val"].rglob("*.png"))
    ]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    cfg = _central_cfg({**folders, "val": csv}, tmp_path / "cache")
    load_data(*_parts(cfg))
    first = len(decodes)
    load_data(*_parts(cfg))
    assert len(decodes) == 2 * first
    assert not (tmp_path / "cache").exists()


def test_a_cache_inside_an_image_folder_is_refused_by_name(folders) -> None:
    cfg = _central_cfg(folders, folders["train"] / "cache")
    with pytest.raises(ValueError, match=r"data.cache_dir .*/train/cache lies inside the image"):
        load_data(*_parts(cfg))


def test_simulated_sites_of_a_folder_source_share_the_cache(folders, tmp_path, decodes) -> None:
    """Each simulation actor is a process of its own: the second one (the process cache
    cleared) decodes nothing and partitions the same images."""
    train = _write_split(tmp_path / "pool", 24, 40)
    overrides = [
        "experiment=fed_quick",
        "secure=none",
        "logger=none",
        "data=folder",
        f"data.train={train}",
        f"data.test={folders['test']}",
        "data.resolution=16",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    cfg = compose_config(overrides)
    sites._bundled_data.cache_clear()
    first = [sites.partition_site(cfg, i, 2) for i in range(2)]
    assert decodes
    decodes.clear()
    sites._bundled_data.cache_clear()  # as the next actor's process
    again = [sites.partition_site(cfg, i, 2) for i in range(2)]
    sites._bundled_data.cache_clear()
    assert not decodes
    for a, b in zip(first, again, strict=True):
        _same(a.splits, b.splits)


def _parts(cfg):
    return cfg.data, cfg.transforms.preprocess


def test_centralised_training_reads_the_cache_through_loader_workers(
    folders, tmp_path, decodes
) -> None:
    """The whole centralised run on a folder source, twice, with two DataLoader worker
    processes: the second run decodes nothing and trains and tests to the same metrics."""
    from task.training.central import run

    cfg = _central_cfg(
        folders,
        tmp_path / "cache",
        "model=small_cnn",
        "model.channels=[4,8,8,8]",
        "train.epochs=1",
        "train.batch_size=8",
        "train.num_workers=2",
        "train.progress=false",
        "metrics.n_bootstrap=10",
    )
    first = run(cfg, tmp_path / "run1")
    decodes.clear()
    second = run(cfg, tmp_path / "run2")
    assert not decodes
    for key in ("test", "val"):  # as text: an undefined NPV is NaN, unequal to itself
        assert json.dumps(second[key], sort_keys=True) == json.dumps(first[key], sort_keys=True)
    weights = [
        checkpoint.load(d / CHECKPOINT_FINAL)["model"]
        for d in (tmp_path / "run1", tmp_path / "run2")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
