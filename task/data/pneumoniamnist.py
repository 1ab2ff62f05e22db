"""PneumoniaMNIST (MedMNIST v2), the bundled default data set.

Same source population as the PriMIA study (Kermany et al., 2018, pediatric chest X-rays).
The file is found from, in order: the ``path`` argument (config), the ``PRIMIA_DATA``
environment variable, ``../shared/data/pneumoniamnist.npz`` beside the checkout. Its hash is
always checked: against a ``<file>.sha256`` sidecar where one exists, else against the MD5
MedMNIST publishes. Only when ``download=True`` and the file is missing is the published
file fetched (and then checked); tests never download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from task.constants import (
    DATA_ENV_VAR,
    DEFAULT_PNEUMONIAMNIST,
    PNEUMONIAMNIST_CLASSES,
    PNEUMONIAMNIST_MD5,
    PNEUMONIAMNIST_URL,
)
from task.data.content import array_content_hash
from task.data.errors import LoadReport
from task.data.preprocess import preprocess_array
from task.data.splits import DataSplits, Split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def resolve_path(path: str | os.PathLike | None) -> Path:
    """Where the npz lies: the given path, else ``$PRIMIA_DATA``, else the bundled copy."""
    if path:
        return Path(path).expanduser()
    if os.environ.get(DATA_ENV_VAR):
        return Path(os.environ[DATA_ENV_VAR]).expanduser()
    return DEFAULT_PNEUMONIAMNIST


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, sha256: str | None = None) -> str:
    """Check ``path`` against ``sha256``, its ``.sha256`` sidecar, or the published MD5.

    Returns the name of the check that passed; raises ``ValueError`` naming the file and both
    digests when none does, so that a truncated or substituted file is never trained on.
    """
    sidecar = path.with_name(path.name + ".sha256")
    if sha256 is None and sidecar.is_file():
        sha256 = sidecar.read_text().split()[0].strip().lower()
    if sha256:
        actual = _digest(path, "sha256")
        if actual != sha256.lower():
            raise ValueError(f"{path}: sha256 {actual} does not match the expected {sha256}")
        return "sha256"
    actual = _digest(path, "md5")
    if actual != PNEUMONIAMNIST_MD5:
        raise ValueError(
            f"{path}: md5 {actual} is not the published PneumoniaMNIST md5 "
            f"{PNEUMONIAMNIST_MD5}, and no .sha256 file lies beside it"
        )
    return "md5"


def download(path: Path, url: str = PNEUMONIAMNIST_URL) -> Path:
    """Fetch the published file to ``path`` atomically and check its MD5."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    os.close(fd)
    try:
        log.info("downloading %s to %s", url, path)
        urllib.request.urlretrieve(url, tmp)
        actual = _digest(Path(tmp), "md5")
        if actual != PNEUMONIAMNIST_MD5:
            raise ValueError(f"{url}: downloaded md5 {actual} != {PNEUMONIAMNIST_MD5}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_npz(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read and sanity-check the three splits: ``{split: (images uint8 (N,H,W), labels)}``."""
    out = {}
    with np.load(path, allow_pickle=False) as npz:
        for split in SPLITS:
            for key in (f"{split}_images", f"{split}_labels"):
                if key not in npz.files:
                    raise ValueError(f"{path}: key {key!r} missing (has {sorted(npz.files)})")
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"].reshape(-1)
            if images.ndim != 3 or len(images) != len(labels):
                raise ValueError(
                    f"{path}: {split} images {images.shape} do not match labels {labels.shape}"
                )
            bad = set(np.unique(labels).tolist()) - set(range(len(PNEUMONIAMNIST_CLASSES)))
            if bad:
                raise ValueError(f"{path}: {split} labels {sorted(bad)} outside 0..1")
            out[split] = (images, labels.astype(np.int64))
    return out


class PneumoniaMNISTSource:
    """Data source for PneumoniaMNIST: published train / val / test splits.

    Args:
        path: npz file; ``None`` means ``$PRIMIA_DATA`` or the bundled copy.
        classes: must equal the file's label order (``normal``, ``pneumonia``); stated in
            config so that every site maps labels the same way.
        resolution: side of the square images the model sees.
        sha256: expected digest; ``None`` uses the sidecar or the published MD5.
        download: fetch the published file if the path does not exist.
        limit: keep only the first ``limit`` images of each split (quick runs and tests).
        on_bad_file: accepted for interface parity with folder sources; the npz is checked
            as a whole.
    """

    def __init__(
        self,
        path: str | None = None,
        classes: tuple[str, ...] | list[str] = PNEUMONIAMNIST_CLASSES,
        resolution: int = 28,
        sha256: str | None = None,
        download: bool = False,
        limit: int | None = None,
        on_bad_file: str = "error",
    ) -> None:
        if tuple(classes) != PNEUMONIAMNIST_CLASSES:
            raise ValueError(
                f"classes {list(classes)} do not match PneumoniaMNIST's label order "
                f"{list(PNEUMONIAMNIST_CLASSES)}"
            )
        if limit is not None and limit < 1:
            raise ValueError(f"limit={limit} must be a positive number of images or null")
        self.path = resolve_path(path)
        self.classes = tuple(classes)
        self.resolution = resolution
        self.sha256 = sha256
        self.download = download
        self.limit = limit

    def cache_place(self) -> None:
        """None: the file is already arrays, so there is no decoding to keep (the
        preprocessed-data cache, :mod:`task.data.loading`, serves image folders)."""
        return None

    def load(self, preprocess: Callable | None = None) -> DataSplits:
        if not self.path.is_file():
            if not self.download:
                raise FileNotFoundError(
                    f"{self.path}: PneumoniaMNIST not found; set data.path or ${DATA_ENV_VAR}, "
                    "or data.download=true on a machine with internet"
                )
            download(self.path)
        check = verify_file(self.path, self.sha256)
        log.info("%s verified by %s", self.path, check)
        raw = load_npz(self.path)
        report = LoadReport()
        splits = {}
        for split, (images, labels) in raw.items():
            if self.limit is not None:
                images, labels = images[: self.limit], labels[: self.limit]
            fingerprint = array_content_hash(images, labels, self.classes)
            splits[split] = Split(preprocess_array(images, preprocess), labels, fingerprint)
            report.loaded[split] = len(labels)
        return DataSplits(self.classes, report=report, **splits)
