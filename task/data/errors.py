"""Bad-input errors and the report of what was skipped."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from task.constants import BAD_FILE_POLICIES


def printable(text: str) -> str:
    """``text`` safe to print, log and write as UTF-8. A file name that is not UTF-8 reaches
    Python with its bad bytes as lone surrogates; they are shown as ``\\xff`` escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name byte produces
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class BadFileError(ValueError):
    """A file that cannot be used for training or evaluation.

    The message always names the file and the reason, so that a site's IT team can find it;
    ``path`` and ``reason`` are printable text even for a file name that is not UTF-8.
    """

    def __init__(self, path: str | bytes | os.PathLike, reason: str) -> None:
        self.path = printable(os.fsdecode(path))
        self.reason = printable(reason)
        super().__init__(f"{self.path}: {self.reason}")


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is a known bad-file policy, else raise naming it."""
    if policy not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file={policy!r} is not one of {list(BAD_FILE_POLICIES)}")
    return policy


@dataclass
class LoadReport:
    """What was loaded and what was skipped (under ``on_bad_file: skip``), per split."""

    loaded: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add_skip(self, split: str, error: BadFileError) -> None:
        self.skipped.append({"split": split, "path": error.path, "reason": error.reason})

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        loaded = ", ".join(f"{k}={v}" for k, v in self.loaded.items())
        text = f"loaded {loaded}; skipped {self.n_skipped} bad file(s)"
        for item in self.skipped:
            text += f"\n  skipped [{item['split']}] {item['path']}: {item['reason']}"
        return text

    def to_dict(self) -> dict:
        return {"loaded": dict(self.loaded), "n_skipped": self.n_skipped, "skipped": self.skipped}
