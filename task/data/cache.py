"""A site's preprocessed images, cached on its own disk across processes (Flower-free).

Why: a deployed SuperNode starts a new process for every message, and each one used to
decode and preprocess every image of the site's folder again. The cache keeps the result of
one decode, as ``.npy`` files that later processes memory-map read-only, so a site decodes
its data once per change of its files or of the preprocessing, not once per message.

The same cache serves centralised training and simulation of folder sources
(:mod:`task.data.loading`), whose train, validation and test folders are separate roots.
An entry is keyed by the SHA-256 of every image file's bytes (with its path relative to its
root and its class folder), the roots' absolute paths (the load report names files by
them), the caller's configuration text (the data and preprocessing settings that change the
arrays, the split's fraction and seed) and the versions of the libraries that decode. Any
change gives another key, hence a miss and a rebuild; only the current entry is kept.

Hashing every file on every load would cost a read of the whole site, so a file is hashed
again only when its ``(size, mtime_ns, ctime_ns, inode)`` changed since the last load (kept
in ``files.json``). The change time is the safeguard: no user call sets it, so an edit that
restores size and mtime with ``os.utime`` is still re-hashed. What this does not see is a
change made behind the file system's back (a raw disk write, a clock set back by root, a
network file system that fakes ctime): delete the cache folder then, as is always safe.

Entries are written into a temporary folder that is renamed into place when complete, so a
process killed mid-write leaves no entry that is read later. An entry that cannot be read
(truncated, missing a file, a manifest that does not parse) is reported in one log line and
rebuilt. Files are created 0o600 in a 0o700 folder: they hold patient images, and nothing
in the cache is ever sent in a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from task.data.errors import LoadReport
from task.data.listing import image_files
from task.data.splits import DataSplits, Split

log = logging.getLogger(__name__)

#: Bumped when the layout of an entry or the meaning of its key changes (2: the images
#: of a split in file-name order, see task.data.listing.scan_folder; 3: DICOM pixels with
#: their VOI LUT or window applied, see task.data.dicom; 4: several roots per entry, and
#: each split's content hash).
CACHE_FORMAT = 4
MANIFEST, FILE_INDEX = "manifest.json", "files.json"
ENTRY_PREFIX, TMP_PREFIX = "entry-", ".tmp-"
SPLITS = ("train", "val", "test")
#: A temporary folder older than this is a killed writer's, and is removed.
STALE_TMP_SECONDS = 3600.0
#: Libraries whose upgrade may change decoded or preprocessed arrays.
_PLUGINS = ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle")
DECODERS = ("numpy", "monai", "pillow", "pydicom", "nibabel", "torch", *_PLUGINS)


class CacheEntryError(ValueError):
    """An entry that exists but cannot be used (truncated, incomplete, another key)."""


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in DECODERS:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def site_image_files(root: Path) -> list[Path]:
    """The image files a folder site is read from: ``root/<class folder>/**``, by the rule
    of :func:`task.data.listing.scan_folder` (class folders outside the class list included:
    under ``on_bad_file: skip`` they are listed in the load report), class folder by class
    folder (the key's order; a split's is scan_folder's)."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    return [p for sub in subdirs for p in image_files(sub)]


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _open_private(path: Path) -> Any:
    """A new file opened for writing, created 0o600 (never an existing file)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _write_json_atomic(data: Any, path: Path) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    with _open_private(tmp) as fh:
        fh.write(json.dumps(data, indent=1).encode())
    os.replace(tmp, path)


class SiteDataCache:
    """The preprocessed-data cache of one site, in ``folder`` (created 0o700).

    Args:
        folder: where entries live, on the site's disk (``<state-dir>/data-cache``).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        #: What the last :meth:`load` did: ``"hit"``, ``"miss"`` or ``"rebuilt"``.
        self.last_outcome = ""

    # -- keys ------------------------------------------------------------------------------
    def _digests(self, roots: list[Path]) -> list[list[str]]:
        """``[root number, relative path, class folder, sha256]`` per file, re-hashing only
        the files whose stat changed since the saved index; the index is rewritten when it
        changed."""
        index_path = self.folder / FILE_INDEX
        names = [str(root) for root in roots]
        try:
            saved = json.loads(index_path.read_text())
            known = saved["files"] if saved.get("roots") == names else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            known = {}
        index, rows = {}, []
        for number, root in enumerate(roots):
            for path in site_image_files(root):
                relative = path.relative_to(root)
                rel = f"{number}/{relative.as_posix()}"
                try:
                    stat = _stat_key(path.stat())
                    old = known.get(rel)
                    same = isinstance(old, list) and old[:4] == stat
                    digest = old[4] if same else _sha256(path)
                    index[rel] = [*stat, digest]
                except OSError as err:  # unreadable now: the decoder reports it; retried
                    digest = f"unreadable:{err.errno}"
                rows.append([rel, relative.parts[0], digest])
        if index != known:
            _write_json_atomic({"roots": names, "files": index}, index_path)
        return rows

    def key(self, roots: list[Path], config_text: str) -> str:
        """The key of the entry for the files now in ``roots`` and ``config_text``."""
        roots = [Path(root).resolve() for root in roots]
        fingerprint = {
            "format": CACHE_FORMAT,
            "roots": [str(root) for root in roots],
            "config": config_text,
            "versions": _library_versions(),
            "files": self._digests(roots),
        }
        return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()

    # -- entries ---------------------------------------------------------------------------
    def _read(self, entry: Path, key: str) -> DataSplits:
        """The splits of a complete entry, memory-mapped read-only; CacheEntryError if it
        is not one."""
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            if manifest.get("key") != key or manifest.get("format") != CACHE_FORMAT:
                raise CacheEntryError("its manifest names another key")
            arrays = {}
            for name, meta in manifest["arrays"].items():
                path = entry / f"{name}.npy"
                if path.stat().st_size != meta["bytes"]:
                    raise CacheEntryError(
                        f"{path.name} is {path.stat().st_size} bytes, not {meta['bytes']}"
                    )
                array = np.load(path, mmap_mode="r", allow_pickle=False)
                if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
                    raise CacheEntryError(f"{path.name} holds {array.shape} {array.dtype}")
                arrays[name] = np.asarray(array)  # a plain read-only view of the map
            prints = manifest["fingerprints"]
            splits = {
                s: Split(arrays[f"{s}_images"], arrays[f"{s}_labels"], prints[s]) for s in SPLITS
            }
            report = LoadReport(
                loaded=dict(manifest["report"]["loaded"]),
                skipped=list(manifest["report"]["skipped"]),
            )
            return DataSplits(tuple(manifest["classes"]), **splits, report=report)
        except CacheEntryError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CacheEntryError(f"{type(err).__name__}: {err}") from err

    def _write(self, entry: Path, key: str, splits: DataSplits) -> None:
        """Write ``splits`` as ``entry``: all files into a temporary folder, manifest last,
        then one rename. A writer killed before the rename leaves only the temporary folder,
        which no reader opens."""
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.folder))  # created 0o700
        arrays: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            part = getattr(splits, split)
            for kind, array in (("images", part.images), ("labels", part.labels)):
                name = f"{split}_{kind}"
                with _open_private(tmp / f"{name}.npy") as fh:
                    np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
                size = (tmp / f"{name}.npy").stat().st_size
                arrays[name] = {
                    "shape": list(array.shape),
                    "dtype": str(array.dtype),
                    "bytes": size,
                }
        manifest = {
            "format": CACHE_FORMAT,
            "key": key,
            "classes": list(splits.classes),
            "report": splits.report.to_dict(),
            "arrays": arrays,
            # The content hashes recognise the published test split (task.data.content).
            "fingerprints": {s: getattr(splits, s).fingerprint for s in SPLITS},
        }
        with _open_private(tmp / MANIFEST) as fh:
            fh.write(json.dumps(manifest, indent=1).encode())
        if entry.exists():  # an unreadable entry being replaced
            shutil.rmtree(entry)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process put the same entry in place first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)

    def _remove_stale(self, keep: Path) -> None:
        """Delete every other entry (the disk must not grow per run) and killed writers'
        temporary folders."""
        for path in self.folder.iterdir():
            old_tmp = path.name.startswith(TMP_PREFIX) and (
                time.time() - path.stat().st_mtime > STALE_TMP_SECONDS
            )
            if (path.name.startswith(ENTRY_PREFIX) and path != keep) or old_tmp:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _prepare_folder(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)  # also an older folder made under a laxer umask

    # -- the one public operation ------------------------------------------------------------
    def load(
        self, roots: list[Path], config_text: str, build: Callable[[], DataSplits]
    ) -> DataSplits:
        """The splits read from the folders ``roots`` under ``config_text``: from the cache
        when the entry for the current files and settings is there, else ``build()`` (then
        stored).

        A cache that cannot be used (no such folder, a disk error) falls back to
        ``build()`` with one log line: the cache only ever saves time.
        """
        roots = [Path(root) for root in roots]
        if not roots or not all(root.is_dir() for root in roots):
            self.last_outcome = "miss"  # a CSV or a missing folder: build() says what is wrong
            return build()
        try:
            self._prepare_folder()
            key = self.key(roots, config_text)
        except OSError as err:
            log.warning("site data cache in %s unusable (%s); decoding uncached", self.folder, err)
            self.last_outcome = "miss"
            return build()
        entry = self.folder / f"{ENTRY_PREFIX}{key}"
        self.last_outcome = "miss"
        if entry.exists():
            try:
                splits = self._read(entry, key)
                self.last_outcome = "hit"
                log.info("site data cache hit: %s", entry)
                return splits
            except CacheEntryError as err:
                log.warning("site data cache entry %s unreadable (%s); rebuilding", entry, err)
                self.last_outcome = "rebuilt"
        splits = build()
        try:
            self._write(entry, key, splits)
            self._remove_stale(keep=entry)
            log.info("site data cache written: %s", entry)
        except OSError as err:
            log.warning("site data cache entry %s not written (%s)", entry, err)
        return splits
