"""Checking a site's audit log: the whole hash chain recomputed, and what the log says.

Run by an auditor (``python -m scripts.verify_site_log``) on a copy of the log, not by the
site while it answers: the site checks only the last entry before each append
(:mod:`client.site_log`). :func:`verify` names the first line that is wrong; a head hash
recorded earlier (``anchor``) also catches entries cut off the end, which leave a valid chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.site_log import GENESIS_PREV, ChainError, parse_entry


@dataclass(frozen=True)
class LogSummary:
    """What a verified log says."""

    path: Path
    site: str
    created: str
    entries: int  # including the genesis header
    replies: int
    errors: int
    run_ids: tuple[int, ...]
    rounds: tuple[int, ...]
    last_epsilon: float | str | None
    head: str


@dataclass
class _Tally:
    """What the entries after the genesis header add up to, as they are read."""

    runs: set[int | None] = field(default_factory=set)
    rounds: set[int] = field(default_factory=set)
    replies: int = 0
    errors: int = 0
    epsilon: float | str | None = None

    def add(self, entry: dict[str, Any]) -> None:
        self.runs.add(entry.get("run_id"))
        if entry.get("round") is not None:
            self.rounds.add(entry["round"])
        if entry["kind"] == "reply":
            self.replies += 1
            if entry.get("epsilon") is not None:
                self.epsilon = entry["epsilon"]
        else:
            self.errors += 1


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a log (call :func:`verify` first to trust them)."""
    return [json.loads(line) for line in Path(path).read_bytes().splitlines()]


def _complete_lines(path: Path) -> list[bytes]:
    """The log's lines, each ended by a newline (a cut last line is refused)."""
    data = path.read_bytes()
    if not data:
        raise ChainError(path, None, "empty: not even a genesis header")
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline, as every append leaves it
    if last:
        raise ChainError(path, len(lines) + 1, "truncated last line (no newline at its end)")
    return lines


def _check_seq(path: Path, i: int, entry: dict[str, Any]) -> None:
    """Entry ``i`` (0-based) carries ``seq`` ``i``: none missing, reordered or repeated."""
    if entry["seq"] != i:
        how = "missing before it" if entry["seq"] > i else "out of order or repeated"
        raise ChainError(
            path, i + 1, f"seq {entry['seq']}, expected {i}: entries {how} (reordered?)"
        )


def _check_genesis(path: Path, entry: dict[str, Any]) -> None:
    if entry["kind"] != "genesis" or entry["prev"] != GENESIS_PREV:
        raise ChainError(path, 1, "the first entry is not a genesis header")


def _check_link(
    path: Path, number: int, entry: dict[str, Any], genesis: dict[str, Any], prev: str
) -> None:
    """A later entry: linked to the one before, of a known kind, of the genesis's site."""
    if entry["prev"] != prev:
        raise ChainError(
            path, number, f"broken link: prev does not match the hash of line {number - 1}"
        )
    if entry["kind"] not in ("reply", "error"):
        raise ChainError(path, number, f"unknown kind {entry['kind']!r}")
    if entry["site"] != genesis["site"]:
        raise ChainError(path, number, f"site {entry['site']!r} in the log of {genesis['site']!r}")


def verify(path: str | Path, anchor: str | None = None) -> LogSummary:
    """Recompute the chain of the log at ``path``; :class:`ChainError` names the first
    line that is wrong. ``anchor``: a head hash recorded earlier, which must be in the log
    (catches entries cut off the end or a rewrite from some entry onwards)."""
    path = Path(path)
    lines = _complete_lines(path)
    tally, prev = _Tally(), None
    for i, line in enumerate(lines):
        entry = parse_entry(path, i + 1, line)
        _check_seq(path, i, entry)
        if i == 0:
            _check_genesis(path, entry)
            genesis = entry
        else:
            _check_link(path, i + 1, entry, genesis, prev)
            tally.add(entry)
        prev = entry["hash"]
        if prev == anchor:
            anchor = None
    if anchor is not None:
        raise ChainError(
            path,
            None,
            f"anchored hash {anchor} is not in the log: entries were cut off its end or "
            "it was rewritten",
        )
    return LogSummary(
        path=path,
        site=genesis["site"],
        created=genesis["time"],
        entries=len(lines),
        replies=tally.replies,
        errors=tally.errors,
        run_ids=tuple(sorted(r for r in tally.runs if r is not None)),
        rounds=tuple(sorted(tally.rounds)),
        last_epsilon=tally.epsilon,
        head=prev,
    )
