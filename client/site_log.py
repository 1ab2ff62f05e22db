"""A site's audit log: what it sent, to whom, under which run, and its ε after each round.

One JSON object per line in ``<state-dir>/site-log.jsonl``, appended (with fsync) and never
rewritten. Line 1 is a genesis header (site, creation time); each later line records one
reply as it is handed to Flower for sending: the run, round, message type, the request it
answers, the destination node, Flower's content id of the reply (the SHA-256 under which
Flower transfers and stores it, so the server can match it), the size of each record, and
the ε/δ the reply reports; never the arrays or metric values themselves. A handler that
raises is logged with its exception type and text, which Flower sends as the error reply's
reason. An entry is written (and fsynced) before Flower sends the reply: a site that cannot
write it raises instead, so no reply it computed leaves unlogged (Flower sends an error
reply naming the log failure); a reply whose sending then fails is logged but never arrives.

Every entry carries ``prev`` (the previous entry's hash) and ``hash`` (SHA-256 of its own
canonical JSON without ``hash``), so :func:`client.site_log_verify.verify` detects an
edited, deleted, inserted or reordered entry and a cut last line. Two changes leave a valid
chain: whole entries cut off the end, and the file rewritten from some entry onwards with
every later hash recomputed. Both are caught only by comparing the head hash with a copy
kept where the site cannot change it (``python -m scripts.verify_site_log`` prints it).

This module writes the chain; :mod:`client.site_log_mod` says what a reply's entry holds
and logs every reply, and :mod:`client.site_log_verify` checks a whole log.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

#: File name of the log in the site's state folder.
LOG_FILE = "site-log.jsonl"
#: Format tag in the genesis entry.
FORMAT = "primia-site-log/1"
#: ``prev`` of the genesis entry.
GENESIS_PREV = "0" * 64
#: Fields every entry must have.
REQUIRED = ("seq", "time", "site", "kind", "prev", "hash")


class SiteLogError(RuntimeError):
    """The log cannot be written: the site refuses to send a reply it cannot log."""


class ChainError(SiteLogError):
    """The log does not verify: ``path``, 1-based ``line`` and what is wrong."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def _canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(
        entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``entry`` without its ``hash`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _tail(f: BinaryIO) -> bytes:
    """The last line of ``f`` (with its newline, if it has one); ``b""`` if empty."""
    end = f.seek(0, os.SEEK_END)
    pos, buf = end, b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        buf = f.read(step) + buf
        cut = buf.rfind(b"\n", 0, len(buf) - 1)
        if cut != -1:
            return buf[cut + 1 :]
    return buf


def _count(f: BinaryIO) -> int:
    """How many newlines ``f`` holds (for error messages only)."""
    f.seek(0)
    return f.read().count(b"\n")


def parse_entry(path: Path, number: int | None, line: bytes) -> dict[str, Any]:
    """One verified-in-isolation line: JSON object, fields, own hash, canonical form."""
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ChainError(path, number, f"not valid JSON ({err})") from None
    if not isinstance(entry, dict):
        raise ChainError(path, number, "not a JSON object")
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ChainError(path, number, f"fields missing: {', '.join(missing)}")
    if entry_hash(entry) != entry["hash"]:
        raise ChainError(path, number, "hash mismatch: the entry was altered after it was written")
    if line != _canonical(entry):
        raise ChainError(path, number, "not in canonical form: the line was edited")
    return entry


class SiteLog:
    """The append-only log at ``path`` of site ``site``; safe across processes (flock)."""

    def __init__(self, path: str | Path, site: str) -> None:
        self.path, self.site = Path(path), site

    def _write(self, f: BinaryIO, entry: dict[str, Any]) -> dict[str, Any]:
        entry["hash"] = entry_hash(entry)
        f.write(_canonical(entry) + b"\n")
        f.flush()
        os.fsync(f.fileno())
        return entry

    def _append_locked(self, f: BinaryIO, fields: Mapping[str, Any] | None) -> dict[str, Any]:
        tail = _tail(f)
        if not tail:  # a new log: its genesis header, and the folder entry made durable
            head = self._write(
                f,
                {
                    "seq": 0,
                    "time": _now(),
                    "site": self.site,
                    "kind": "genesis",
                    "format": FORMAT,
                    "prev": GENESIS_PREV,
                },
            )
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            if not tail.endswith(b"\n"):
                raise ChainError(
                    self.path, _count(f) + 1, "truncated last line (no newline at its end)"
                )
            try:
                head = parse_entry(self.path, None, tail[:-1])
            except ChainError as err:
                raise ChainError(self.path, _count(f), err.problem) from None
            if head["site"] != self.site:
                raise SiteLogError(
                    f"{self.path} is the log of site {head['site']!r}, not {self.site!r}"
                )
        if fields is None:
            return head
        entry = {
            **fields,
            "seq": head["seq"] + 1,
            "time": _now(),
            "site": self.site,
            "prev": head["hash"],
        }
        return self._write(f, entry)

    def _locked(self, fields: Mapping[str, Any] | None) -> dict[str, Any]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    return self._append_locked(f, fields)
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        except ChainError as err:
            raise SiteLogError(
                f"site log {err}; the site sends nothing more until it is repaired "
                f"(python -m scripts.verify_site_log {self.path})"
            ) from err
        except (OSError, ValueError) as err:
            raise SiteLogError(
                f"site log {self.path} cannot be written ({err}); the site refuses to send "
                "what it cannot log"
            ) from err

    def head(self) -> dict[str, Any]:
        """The last entry, after writing the genesis header if the log is new: proves the
        log readable, writable and its tail intact."""
        return self._locked(None)

    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry (``seq``, ``time``, ``site``, ``prev``, ``hash`` are added)."""
        return self._locked(fields)
