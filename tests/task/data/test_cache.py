"""The site's preprocessed-data cache (task/data/cache.py): a hit decodes nothing and gives
the same splits and load report; any change of the files or the settings is a miss; a broken
or half-written entry is never read; the files are private to the site's user.

Each test counts the decoder's calls (a spy on ``ImageReader.read``): without the cache
every load decodes every file, so the "hit" assertions fail.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from task.config import compose_config
from task.data import cache as cache_module
from task.data.cache import ENTRY_PREFIX, SiteDataCache
from task.data.sites import DATA_CACHE_DIR, _cached_site, folder_site, load_site
from task.data.splits import DataSplits
from tests.factories import pattern, write_dicom, write_png

OVERRIDES = ["experiment=fed_quick", "secure=none", "data=folder", "data.train=unused"]


@pytest.fixture(scope="module")
def cfg():
    return compose_config([*OVERRIDES, "data.resolution=16", "data.on_bad_file=skip"])


def _image(i: int) -> np.ndarray:
    img = pattern()
    img[5 + i % 10, 3 + i % 20] = 200 - i  # every file different
    return img


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Six PNGs and a DICOM per class, and one bad file (listed in the load report)."""
    root = tmp_path / "site"
    for c, cls in enumerate(["normal", "pneumonia"]):
        for i in range(6):
            write_png(root / cls / f"{i}.png", _image(10 * c + i))
        write_dicom(root / cls / "scan.dcm", pattern(dtype=np.uint16, high=4000) + c)
    (root / "pneumonia" / "broken.png").write_bytes(b"not an image")
    return root


def _load(cfg, root: Path, cache_dir: Path) -> DataSplits:
    return folder_site(cfg, "st-test", 0, str(root), cache_dir).splits


def _assert_same(a: DataSplits, b: DataSplits) -> None:
    assert a.classes == b.classes
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)
    assert a.report.to_dict() == b.report.to_dict()
    assert a.report.summary() == b.report.summary()


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob(f"{ENTRY_PREFIX}*"))


def test_a_hit_gives_the_same_splits_and_report_without_decoding(cfg, site, tmp_path, decodes):
    cache_dir = tmp_path / "state" / DATA_CACHE_DIR
    fresh = _load(cfg, site, None)
    assert fresh.report.n_skipped == 1 and len(decodes) == 15
    cold = _load(cfg, site, cache_dir)
    assert len(decodes) == 30
    warm = _load(cfg, site, cache_dir)
    assert len(decodes) == 30  # nothing decoded
    _assert_same(warm, fresh)
    _assert_same(cold, fresh)
    assert not warm.train.images.flags.writeable  # memory-mapped, read-only
    assert len(_entries(cache_dir)) == 1


def test_cache_files_are_private_to_the_site(cfg, site, tmp_path) -> None:
    cache_dir = tmp_path / "state" / DATA_CACHE_DIR
    _load(cfg, site, cache_dir)
    paths = list(cache_dir.rglob("*"))
    assert any(p.name == "train_images.npy" for p in paths)
    for path in [cache_dir, *paths]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_an_edit_restoring_size_and_mtime_is_still_seen(cfg, site, tmp_path, decodes) -> None:
    """The stat pre-check includes the change time, which ``os.utime`` cannot set back: a
    check on (size, mtime) alone would serve the old pixels here."""
    cache_dir = tmp_path / DATA_CACHE_DIR
    before = _load(cfg, site, cache_dir)
    scan = site / "normal" / "scan.dcm"
    old = scan.stat()
    data = bytearray(scan.read_bytes())
    data[-100] ^= 0x07  # one pixel, same size (uncompressed DICOM)
    scan.write_bytes(bytes(data))
    os.utime(scan, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (scan.stat().st_size, scan.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    decodes.clear()
    after = _load(cfg, site, cache_dir)
    assert len(decodes) == 15  # rebuilt
    changed = [
        not np.array_equal(getattr(before, s).images, getattr(after, s).images)
        for s in ("train", "val")
    ]
    assert any(changed)
    _assert_same(after, _load(cfg, site, None))
    assert len(_entries(cache_dir)) == 1  # the stale entry is gone


@pytest.mark.parametrize("change", ["edit", "add", "remove", "add_bad"])
def test_a_changed_added_or_removed_file_is_a_miss(cfg, site, tmp_path, decodes, change):
    cache_dir = tmp_path / DATA_CACHE_DIR
    _load(cfg, site, cache_dir)
    target = site / "pneumonia" / "3.png"
    if change == "edit":
        write_png(target, _image(99))
    elif change == "add":
        write_png(site / "normal" / "new.png", _image(50))
    elif change == "remove":
        target.unlink()
    else:
        (site / "normal" / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    decodes.clear()
    after = _load(cfg, site, cache_dir)
    assert decodes  # rebuilt
    _assert_same(after, _load(cfg, site, None))
    assert len(_entries(cache_dir)) == 1
    decodes.clear()
    _load(cfg, site, cache_dir)
    assert not decodes  # and the new entry is a hit


@pytest.mark.parametrize(
    "override", ["transforms.norm_mean=0.4", "data.resolution=12", "seed=7", "data.channels=3"]
)
def test_a_changed_preprocessing_or_split_setting_is_a_miss(cfg, site, tmp_path, decodes, override):
    cache_dir = tmp_path / DATA_CACHE_DIR
    _load(cfg, site, cache_dir)
    other = compose_config([*OVERRIDES, "data.resolution=16", "data.on_bad_file=skip", override])
    decodes.clear()
    after = _load(other, site, cache_dir)
    assert len(decodes) == 15
    _assert_same(after, _load(other, site, None))
    assert len(_entries(cache_dir)) == 1  # only the current entry is kept
    decodes.clear()
    _assert_same(_load(other, site, cache_dir), after)
    assert not decodes  # the new settings' entry is a hit


def _truncate(entry: Path) -> None:
    path = entry / "train_images.npy"
    path.write_bytes(path.read_bytes()[:-64])


def _garble_manifest(entry: Path) -> None:
    (entry / "manifest.json").write_text('{"key": ')


def _drop_file(entry: Path) -> None:
    (entry / "val_labels.npy").unlink()


def _other_shape(entry: Path) -> None:
    path = entry / "val_labels.npy"
    labels = np.load(path)
    path.unlink()
    with path.open("wb") as fh:  # a valid array of another shape
        np.save(fh, labels.reshape(-1, 1))


@pytest.mark.parametrize("damage", [_truncate, _garble_manifest, _drop_file, _other_shape])
def test_an_unreadable_entry_is_rebuilt_with_one_log_line(
    cfg, site, tmp_path, decodes, caplog, damage
) -> None:
    cache_dir = tmp_path / DATA_CACHE_DIR
    first = _load(cfg, site, cache_dir)
    (entry,) = _entries(cache_dir)
    damage(entry)
    decodes.clear()
    with caplog.at_level(logging.WARNING, logger="task.data.cache"):
        again = _load(cfg, site, cache_dir)
    lines = [r for r in caplog.records if r.name == "task.data.cache"]
    assert len(lines) == 1 and "unreadable" in lines[0].getMessage()
    assert "rebuilding" in lines[0].getMessage()
    assert len(decodes) == 15
    _assert_same(again, first)
    decodes.clear()
    _assert_same(_load(cfg, site, cache_dir), first)  # the rebuilt entry is a hit
    assert not decodes


class Killed(BaseException):
    """A process killed mid-write: nothing after it runs."""


def test_a_writer_killed_mid_write_leaves_no_entry_that_is_read(
    cfg, site, tmp_path, decodes, monkeypatch
) -> None:
    cache_dir = tmp_path / DATA_CACHE_DIR
    real_save, saved = np.save, []

    def dying_save(fh, array, **kwargs):
        if len(saved) == 3:
            raise Killed
        saved.append(1)
        real_save(fh, array, **kwargs)

    monkeypatch.setattr(cache_module.np, "save", dying_save)
    with pytest.raises(Killed):
        _load(cfg, site, cache_dir)
    monkeypatch.setattr(cache_module.np, "save", real_save)
    assert saved and not _entries(cache_dir)  # some files written, no entry in place
    decodes.clear()
    again = _load(cfg, site, cache_dir)
    assert len(decodes) == 15  # decoded, not read from the half-written files
    _assert_same(again, _load(cfg, site, None))


def test_a_cache_that_cannot_be_written_still_loads_the_site(cfg, site, tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING, logger="task.data.cache"):
        splits = _load(cfg, site, blocked / DATA_CACHE_DIR)
    _assert_same(splits, _load(cfg, site, None))
    assert "decoding uncached" in caplog.text


def test_load_site_keeps_its_cache_in_the_state_dir_and_trains_on_it(
    site, tmp_path, decodes
) -> None:
    """The deployment path: a node config with ``data-path`` and ``state-dir``; a new
    process (the per-process cache cleared) decodes nothing, and the read-only arrays train
    and evaluate without torch's warning about non-writable memory."""
    from task.federation.local_round import local_evaluate, local_train
    from task.models.factory import build_model

    cfg = compose_config([*OVERRIDES, "data.resolution=16", "data.on_bad_file=skip"])
    node = {"site-name": "st-x", "data-path": str(site), "state-dir": str(tmp_path / "st-x")}
    _cached_site.cache_clear()
    first = load_site(cfg, node)
    assert _entries(tmp_path / "st-x" / DATA_CACHE_DIR)
    _cached_site.cache_clear()  # as the next message's process
    decodes.clear()
    warm = load_site(cfg, node)
    assert not decodes and not warm.splits.train.images.flags.writeable
    _assert_same(warm.splits, first.splits)
    model = build_model(cfg.model, warm.splits.in_shape, 2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")
        result = local_train(model, warm, cfg, 1)
        metrics = local_evaluate(model, warm.splits.val, warm.splits.classes)
    assert np.isfinite(result.loss) and result.num_examples > 0
    assert metrics["num-examples"] == len(warm.splits.val)
    _cached_site.cache_clear()


def _points_into(tensor, array: np.ndarray) -> bool:
    start = array.ctypes.data
    return start <= tensor.data_ptr() < start + array.nbytes


def test_read_only_loader_gives_the_same_batches_from_copies(cfg, site, tmp_path) -> None:
    """Plain batches and per-image augmentation over the memory map equal those over the
    same arrays in memory, and no image the loader's dataset hands out points into the
    read-only map (a write through it would crash the process; torch warns only once)."""
    from monai.transforms import RandFlip

    _load(cfg, site, tmp_path / DATA_CACHE_DIR)
    mapped = _load(cfg, site, tmp_path / DATA_CACHE_DIR).train
    in_memory = type(mapped)(np.array(mapped.images), np.array(mapped.labels))
    assert not mapped.images.flags.writeable and in_memory.images.flags.writeable
    for augment in (None, RandFlip(prob=0.0), RandFlip(prob=0.5, spatial_axis=1)):
        batches = []
        for split in (mapped, in_memory):
            loader = split.loader(4, shuffle=False, augment=augment)
            if augment is not None:
                loader.dataset.set_random_state(seed=3)
            batches.append([(x.clone(), y.clone()) for x, y in loader])
        for (xa, ya), (xb, yb) in zip(*batches, strict=True):
            assert np.array_equal(xa.numpy(), xb.numpy()) and np.array_equal(ya, yb)
        item = mapped.loader(4, shuffle=False, augment=augment).dataset[1][0]
        assert not _points_into(item, mapped.images)
        assert _points_into(in_memory.loader(4, shuffle=False).dataset[1][0], in_memory.images)


def test_the_key_covers_file_bytes_paths_and_settings(site, tmp_path) -> None:
    cache = SiteDataCache(tmp_path / DATA_CACHE_DIR)
    cache.folder.mkdir(mode=0o700)
    key = cache.key([site], "a")
    assert cache.key([site], "a") == key
    assert cache.key([site], "b") != key
    (site / "normal" / "0.png").rename(site / "normal" / "renamed.png")
    assert cache.key([site], "a") != key


def test_a_state_folder_inside_the_image_folder_is_refused_by_name(tmp_path) -> None:
    from task.config import compose_config
    from task.data.sites import folder_site

    cfg = compose_config(["logger=none"])
    with pytest.raises(ValueError, match=r"state-dir .* lies inside data-path"):
        folder_site(cfg, "site-0", 0, str(tmp_path), cache_dir=tmp_path / "data-cache")
