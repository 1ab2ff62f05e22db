"""A hospital's readiness check of its own images, before it joins a run (Flower-free).

Every file of the site's folder or CSV is listed, read, checked and preprocessed exactly as
training does (:class:`~task.data.folder.ImageFolderSource`,
:func:`~task.data.files.load_record`), but nothing stops at the first bad file: the check
lists them all, each with its reason, and then says whether the run's ``on_bad_file``
policy would let training start. What it reports are counts and ranges; no image and no
file name leaves the machine (``scripts.check_site`` prints them and writes them beside
itself only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from task.data.errors import BadFileError, LoadReport
from task.data.files import ImageFacts, load_record
from task.data.folder import ImageFolderSource

#: The split a deployed site's data path is read as (task.data.sites.folder_site).
SPLIT = "train"
#: Distinct values listed per fact; the rest are counted together.
MOST_COMMON = 6


@dataclass
class SiteCheck:
    """What the check found: usable images per class, bad files, header facts and the
    intensity range the model would see."""

    classes: tuple[str, ...]
    policy: str
    per_class: Counter = field(default_factory=Counter)
    bad: list[dict[str, str]] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)
    bits: Counter = field(default_factory=Counter)
    photometric: Counter = field(default_factory=Counter)
    encodings: Counter = field(default_factory=Counter)
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, label: int, facts: ImageFacts, image: np.ndarray) -> None:
        self.per_class[self.classes[label]] += 1
        self.sizes[f"{facts.height}x{facts.width}"] += 1
        self.bits[str(facts.bits)] += 1
        self.photometric[facts.photometric] += 1
        self.encodings[facts.encoding] += 1
        self.low, self.high = min(self.low, float(image.min())), max(self.high, float(image.max()))

    @property
    def usable(self) -> int:
        return sum(self.per_class.values())

    def problems(self) -> list[str]:
        """Why training would not start; empty when the site is ready."""
        out = []
        if self.bad and self.policy == "error":
            out.append(
                f"{len(self.bad)} bad file(s) and on_bad_file=error: training stops at the "
                "first; fix or remove them, or run with data.on_bad_file=skip to leave them out"
            )
        out += [f"class {c!r} has no usable image" for c in self.classes if not self.per_class[c]]
        return out

    def lines(self) -> list[str]:
        """The summary, one fact per line."""
        out = [f"usable images: {self.usable}; bad files: {len(self.bad)}"]
        out += [f"class {c}: {self.per_class[c]}" for c in self.classes]
        out += [f"bad: {item['path']}: {item['reason']}" for item in self.bad]
        for what, counts in self._facts().items():
            out.append(f"{what}: {_counts(counts)}")
        if self.usable:
            out.append(f"intensity after preprocessing: {self.low:.3f} to {self.high:.3f}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": {c: self.per_class[c] for c in self.classes},
            "on_bad_file": self.policy,
            "bad": self.bad,
            **{what: dict(counts) for what, counts in self._facts().items()},
            "intensity": {"min": self.low, "max": self.high} if self.usable else None,
            "problems": self.problems(),
        }

    def _facts(self) -> dict[str, Counter]:
        return {
            "image sizes": self.sizes,
            "bit depths": self.bits,
            "photometric interpretations": self.photometric,
            "transfer syntaxes / formats": self.encodings,
        }


def _counts(counts: Counter) -> str:
    if not counts:
        return "-"
    common = counts.most_common(MOST_COMMON)
    text = ", ".join(f"{value} ({n})" for value, n in common)
    rest = sum(counts.values()) - sum(n for _, n in common)
    return text + (f", {len(counts) - len(common)} other(s) ({rest})" if rest else "")


def check_site(source: ImageFolderSource, preprocess: Callable | None) -> SiteCheck:
    """Read every file of ``source``'s training path as training would; collect it all."""
    result = SiteCheck(source.classes, source.policy)
    report = LoadReport()
    for record in source.records(SPLIT, report, policy="skip"):
        try:
            image, facts = load_record(record, source.reader, preprocess)
        except BadFileError as err:
            report.add_skip(SPLIT, err)
            continue
        result.add(record.label, facts, image)
    result.bad = [{"path": item["path"], "reason": item["reason"]} for item in report.skipped]
    return result
