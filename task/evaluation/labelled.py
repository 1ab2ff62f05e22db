"""The labelled images a checkpoint is evaluated on: a split of the bundled PneumoniaMNIST
file, a folder with one subfolder per class, or a CSV of ``path,label`` (PNG, JPEG, DICOM
or NIfTI files, read as a site reads them: :mod:`task.data.files`).

Images pass through the checkpoint's own preprocessing by the same functions training
used (``preprocess_array`` for the npz, ``load_records`` for files), so that the bundled
test split evaluated here is, array for array, the split training tested. Each image keeps
a name for the predictions table, and the set its content hash (:mod:`task.data.content`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from task.constants import PNEUMONIAMNIST_CLASSES
from task.data.content import array_content_hash, content_hash
from task.data.errors import BadFileError, LoadReport, check_policy
from task.data.files import ImageReader, load_records
from task.data.listing import read_csv, scan_folder
from task.data.pneumoniamnist import SPLITS, load_npz, resolve_path, verify_file
from task.data.preprocess import preprocess_array
from task.data.splits import Split
from task.evaluation.trained import Trained, check_data

#: The name of the evaluated set in the load report (its skipped files are listed under it).
EVALUATED = "evaluated"


@dataclass(frozen=True)
class DataSpec:
    """Which labelled images (``data`` in ``conf/evaluate.yaml``).

    Args:
        path: ``None``: the bundled PneumoniaMNIST file (``$PRIMIA_DATA`` or
            ``../shared/data``); else a folder ``<root>/<class>/<file>`` or a ``.csv``.
        split: the bundled file's split (``train``, ``val`` or ``test``).
        on_bad_file: ``error`` or ``skip`` (counted and listed in ``metrics.json``).
        limit: keep only the first ``limit`` images (the set is then not the published one).
        resolution, channels: what the data config asks; ``None``: the checkpoint's own. A
            value that differs from the checkpoint's is refused.
    """

    path: str | None = None
    split: str = "test"
    on_bad_file: str = "error"
    limit: int | None = None
    resolution: int | None = None
    channels: int | None = None


@dataclass(frozen=True)
class LabelledSet:
    """Preprocessed images with labels in the checkpoint's class order (and the content
    hash), one name per image, what was read, and what was skipped."""

    split: Split
    names: list[str]
    source: str
    report: LoadReport


def data_classes(spec: DataSpec) -> tuple[str, ...]:
    """The classes the data names: PneumoniaMNIST's, a folder's class subfolders, or the
    labels a CSV uses (an unreadable CSV is left to :func:`task.data.listing.read_csv`)."""
    if spec.path is None:
        return PNEUMONIAMNIST_CLASSES
    path = Path(spec.path)
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise BadFileError(path, "CSV file not found")
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            try:
                labels = {row.get("label") for row in csv.DictReader(fh)}
            except csv.Error:
                return ()
        return tuple(sorted(label for label in labels if label))
    if not path.is_dir():
        raise BadFileError(path, "is neither a folder nor a .csv file")
    return tuple(sorted(p.name for p in path.iterdir() if p.is_dir()))


def load_labelled(spec: DataSpec, trained: Trained) -> LabelledSet:
    """The images ``spec`` names, checked against and preprocessed for ``trained``."""
    check_policy(spec.on_bad_file)
    if spec.limit is not None and spec.limit < 1:
        raise ValueError(f"data.limit={spec.limit} must be a positive number of images or null")
    check_data(trained, data_classes(spec), resolution=spec.resolution, channels=spec.channels)
    if spec.path is None:
        return _bundled(spec, trained)
    return _files(spec, trained)


def _bundled(spec: DataSpec, trained: Trained) -> LabelledSet:
    if spec.split not in SPLITS:
        raise ValueError(f"data.split={spec.split!r} is not one of {list(SPLITS)}")
    path = resolve_path(None)
    verify_file(path)
    images, labels = load_npz(path)[spec.split]
    images, labels = images[: spec.limit], labels[: spec.limit]
    fingerprint = array_content_hash(images, labels, PNEUMONIAMNIST_CLASSES)
    # Labels by class name, in the checkpoint's order (equal to the file's when trained on it).
    order = np.array([trained.classes.index(name) for name in PNEUMONIAMNIST_CLASSES])
    preprocess = instantiate(trained.config["preprocess"])
    split = Split(preprocess_array(images, preprocess), order[labels], fingerprint)
    report = LoadReport(loaded={EVALUATED: len(split)})
    names = [f"{path.name}#{spec.split}/{i}" for i in range(len(split))]
    return LabelledSet(split, names, f"{path} ({spec.split} split)", report)


def _files(spec: DataSpec, trained: Trained) -> LabelledSet:
    path, report = Path(spec.path), LoadReport()
    if path.suffix.lower() == ".csv":
        records = read_csv(path, trained.classes, report, spec.on_bad_file, EVALUATED)
    else:
        records = scan_folder(path, trained.classes, spec.on_bad_file, report, EVALUATED)
    records = records[: spec.limit]
    reader = ImageReader(channels=int(trained.config["channels"]))
    preprocess = instantiate(trained.config["preprocess"])
    kept = load_records(records, reader, preprocess, spec.on_bad_file, report, EVALUATED)
    fingerprint = content_hash(kept.digests, kept.labels, trained.classes)
    split = Split(kept.images, kept.labels, fingerprint)
    return LabelledSet(split, [str(p) for p in kept.paths], str(path), report)
