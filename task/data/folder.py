"""Data source for a site's own image files (folder per class, or CSV)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from task.data.content import content_hash
from task.data.errors import BadFileError, LoadReport, check_policy
from task.data.files import ImageReader, load_records
from task.data.listing import Record, read_csv, scan_folder
from task.data.splits import DataSplits, Split


class ImageFolderSource:
    """Images from a folder (``<root>/<class>/<file>``) or a CSV of ``path,label``.

    Args:
        train: folder or ``.csv`` of training images.
        classes: the class list, in label order; the same at every site.
        val: folder or CSV; ``None`` carves a stratified ``val_fraction`` out of ``train``.
        test: folder or CSV; ``None`` for a site that keeps no test set (federated sites).
        resolution: side of the square images the model sees.
        channels: 1 (grayscale; RGB converted) or 3.
        val_fraction: share of ``train`` used for validation when ``val`` is ``None``.
        seed: seed of that split.
        on_bad_file: ``"error"`` stops on the first bad file; ``"skip"`` counts and reports.
        limit: keep only the first ``limit`` files of each split.
        cache_dir: where the decoded, preprocessed splits are kept between runs
            (:mod:`task.data.cache`, through :func:`task.data.loading.load_data`); None:
            decode at every load.
    """

    def __init__(
        self,
        train: str,
        classes: Sequence[str],
        val: str | None = None,
        test: str | None = None,
        resolution: int = 224,
        channels: int = 1,
        val_fraction: float = 0.1,
        seed: int = 0,
        on_bad_file: str = "error",
        limit: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes {list(classes)} must be at least two distinct names")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
        self.paths = {"train": train, "val": val, "test": test}
        self.classes = tuple(classes)
        self.resolution = resolution
        self.val_fraction = val_fraction
        self.seed = seed
        self.policy = check_policy(on_bad_file)
        self.limit = limit
        self.reader = ImageReader(channels=channels)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    def cache_place(self) -> tuple[Path, list[Path]] | None:
        """Where this source's cache lies and the folders its entries are keyed on (every
        split's); None when it keeps none: no ``cache_dir``, or a split read from a CSV,
        whose listed files may lie anywhere."""
        sources = [Path(path) for path in self.paths.values() if path is not None]
        if self.cache_dir is None or any(path.suffix.lower() == ".csv" for path in sources):
            return None
        for root in sources:
            if self.cache_dir.resolve().is_relative_to(root.resolve()):
                # The cache would be scanned as one more class folder of the images.
                raise ValueError(
                    f"data.cache_dir {self.cache_dir} lies inside the image folder {root}; "
                    "keep the cache outside it"
                )
        return self.cache_dir, sources

    def records(self, split: str, report: LoadReport, policy: str | None = None) -> list[Record]:
        """The files ``split`` lists. ``policy``: instead of the source's own; the site's
        readiness check lists under ``"skip"`` to see every problem, not the first."""
        source = Path(self.paths[split])
        policy = check_policy(policy) if policy is not None else self.policy
        if source.suffix.lower() == ".csv":
            records = read_csv(source, self.classes, report, policy, split)
        else:
            records = scan_folder(source, self.classes, policy, report, split)
        return records[: self.limit] if self.limit else records

    def _load_split(self, split: str, preprocess: Callable | None, report: LoadReport) -> Split:
        records = self.records(split, report)
        kept = load_records(records, self.reader, preprocess, self.policy, report, split)
        fingerprint = content_hash(kept.digests, kept.labels, self.classes)
        return Split(kept.images, kept.labels, fingerprint)

    def load(self, preprocess: Callable | None = None) -> DataSplits:
        report = LoadReport()
        train = self._load_split("train", preprocess, report)
        if self.paths["val"] is not None:
            val = self._load_split("val", preprocess, report)
        else:
            if len(train) < 2:
                raise BadFileError(
                    self.paths["train"],
                    f"{len(train)} usable image: too few to split off a validation set",
                )
            train, val = train.stratified_split(self.val_fraction, self.seed)
            report.loaded["train"], report.loaded["val"] = len(train), len(val)
        if self.paths["test"] is not None:
            test = self._load_split("test", preprocess, report)
        else:
            test = Split(train.images[:0], train.labels[:0])
        return DataSplits(self.classes, train, val, test, report)
