"""Which files a site's split holds: a folder with one subfolder per class, or a CSV of
``path,label`` (reading them: :mod:`task.data.files`).

A class folder or label outside the configured class list, a missing file or an empty
input is a :class:`BadFileError` naming it, or under ``on_bad_file: skip`` a skip listed
in the :class:`LoadReport`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from task.constants import IMAGE_SUFFIXES
from task.data.errors import BadFileError, LoadReport, check_policy


@dataclass(frozen=True)
class Record:
    """One image file and its class index."""

    path: Path
    label: int


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the image suffixes this module reads."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in IMAGE_SUFFIXES)


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (any depth), in path order."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and is_image_file(p)]


def scan_folder(
    root: str | Path,
    classes: Sequence[str],
    policy: str = "error",
    report: LoadReport | None = None,
    split: str = "train",
) -> list[Record]:
    """List ``root/<class>/*`` image files; refuse empty input. A class folder not in
    ``classes`` is refused under policy ``error``; under ``skip`` its files are skipped and
    counted in ``report``."""
    root = Path(root)
    report = report if report is not None else LoadReport()
    if not root.is_dir():
        raise BadFileError(root, "is not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p for p in subdirs if p.name not in classes]
    if unknown and check_policy(policy) == "error":
        raise BadFileError(
            root,
            f"class folder(s) {[p.name for p in unknown]} are not in the class list "
            f"{list(classes)}",
        )
    for sub in unknown:
        reason = f"in class folder {sub.name!r}, which is not in the class list {list(classes)}"
        for path in image_files(sub):
            report.add_skip(split, BadFileError(path, reason))
    records = [
        Record(path, classes.index(sub.name))
        for sub in subdirs
        if sub.name in classes
        for path in image_files(sub)
    ]
    # In file-name order across the class folders, not class by class: a site written by
    # task.data.export (files named by their index in the data set) then holds its images
    # in the order its simulated twin does, and a deployment computes what the simulation
    # computes (the batches drawn from a class-grouped order differ).
    records.sort(key=lambda r: (r.path.name, str(r.path)))
    if not records:
        raise BadFileError(
            root, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in class folders {list(classes)}"
        )
    return records


def read_csv(
    csv_path: str | Path, classes: Sequence[str], report: LoadReport, policy: str, split: str
) -> list[Record]:
    """Read ``path,label`` rows (paths relative to the CSV's folder; label by class name)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise BadFileError(csv_path, "CSV file not found")
    records = []
    # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name;
    # surrogateescape: a file name that is not UTF-8 still finds its file.
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        try:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                raise BadFileError(csv_path, f"needs columns 'path,label', has {reader.fieldnames}")
            rows = list(enumerate(reader, start=2))
        except csv.Error as err:
            raise BadFileError(csv_path, f"is not a valid CSV file ({err})") from err
    for line, row in rows:
        try:
            if row["path"] is None or row["label"] is None:
                raise BadFileError(csv_path, f"CSV line {line} has no path or no label")
            path = csv_path.parent / row["path"]
            if row["label"] not in classes:
                raise BadFileError(
                    path, f"label {row['label']!r} (CSV line {line}) not in {list(classes)}"
                )
            if not path.is_file():
                raise BadFileError(path, f"file named on CSV line {line} does not exist")
        except BadFileError as err:
            if policy == "error":
                raise
            report.add_skip(split, err)
            continue
        records.append(Record(path, classes.index(row["label"])))
    if not records:
        raise BadFileError(csv_path, "no usable rows")
    return records
