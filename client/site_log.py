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
canonical JSON without ``hash``), so :func:`verify` detects an edited, deleted, inserted or
reordered entry and a cut last line. Two changes leave a valid chain: whole entries cut off
the end, and the file rewritten from some entry onwards with every later hash recomputed.
Both are caught only by comparing the head hash with a copy kept where the site cannot
change it (``python -m scripts.verify_site_log`` prints it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from omegaconf import DictConfig

from mpc.secagg import wire
from task.constants import SITE_RECORD
from task.federation.node import DATA_PATH, STATE_DIR, site_name, site_state_dir

log = logging.getLogger(__name__)

#: File name of the log in the site's state folder.
LOG_FILE = "site-log.jsonl"
#: Format tag in the genesis entry.
FORMAT = "primia-site-log/1"
#: ``prev`` of the genesis entry.
GENESIS_PREV = "0" * 64
#: Optional node-config key: the SuperLink address this SuperNode was started with (Flower
#: does not tell the ClientApp); logged as the destination's address when given.
SUPERLINK = "superlink"
#: Run-config keys logged with every reply (deployment; a simulation has none).
RUN_KEYS = ("experiment", "overrides")
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


def _number(value: Any) -> float | str | None:
    """A JSON-safe ε or δ (a non-finite float as text)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


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


def _parse(path: Path, number: int | None, line: bytes) -> dict[str, Any]:
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
                head = _parse(self.path, None, tail[:-1])
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


# ---- What a reply records ---------------------------------------------------------------


def _round(msg: Message) -> int | None:
    if msg.has_content():
        config = msg.content.config_records.get("config")
        if config is not None and "server-round" in config:
            return int(config["server-round"])
        secure = msg.content.config_records.get(wire.RECORD)
        if secure is not None and "round" in secure:
            return int(secure["round"])
    group = msg.metadata.group_id
    return int(group) if group.isdigit() else None


def _secagg(msg: Message) -> dict[str, str] | None:
    """The secure-aggregation stage a request belongs to (``mask``: a masked update)."""
    record = msg.content.config_records.get(wire.RECORD) if msg.has_content() else None
    if record is None:
        return None
    return {"stage": str(record.get("stage", "mask")), "kind": str(record.get("kind", ""))}


def _records(reply: Message) -> dict[str, dict[str, Any]]:
    """Per record: its type and bytes (array payloads; serialised config and metrics)."""
    out = {}
    for name, record in reply.content.items():
        if isinstance(record, ArrayRecord):
            size = sum(len(array.data) for array in record.values())
        else:
            size = len(record.deflate())
        out[name] = {"type": type(record).__name__, "bytes": size}
    return out


def _common(msg: Message, context: Context) -> dict[str, Any]:
    """Run, round, type, request answered and destination (from the request)."""
    run = {k: str(context.run_config[k]) for k in RUN_KEYS if context.run_config.get(k)}
    superlink = context.node_config.get(SUPERLINK)
    return {
        "run_id": int(msg.metadata.run_id),
        "run_config": run or None,
        "round": _round(msg),
        "message_type": msg.metadata.message_type,
        "group_id": msg.metadata.group_id,
        "reply_to": msg.metadata.message_id,
        "to_node": int(msg.metadata.src_node_id),
        "superlink": str(superlink) if superlink else None,
        "secagg": _secagg(msg),
    }


def reply_fields(msg: Message, reply: Message, context: Context) -> dict[str, Any]:
    """The entry for ``reply`` to ``msg``: digests and sizes, never the values."""
    fields = _common(msg, context) | {"to_node": int(reply.metadata.dst_node_id)}
    if reply.has_error():
        return fields | {
            "kind": "error",
            "error": {"code": int(reply.error.code), "reason": str(reply.error.reason)},
        }
    site = reply.content.config_records.get(SITE_RECORD) or {}
    records = _records(reply)
    return fields | {
        "kind": "reply",
        "digest": reply.content.object_id,
        "bytes": sum(r["bytes"] for r in records.values()),
        "records": records,
        "epsilon": _number(site.get("epsilon")),
        "delta": _number(site.get("delta")),
    }


def error_fields(msg: Message, context: Context, err: BaseException) -> dict[str, Any]:
    """The entry for a handler (or inner mod) that raised ``err``: Flower's runtime sends its
    type and text to the server as the error reply's reason.

    The text is logged, not hashed: the server receives the same words, so the log holds
    nothing that has not left the site already, and an auditor can read what was said.
    Exception texts name settings, sites, files and ε, never pixel or metric values."""
    kind = type(err)
    return _common(msg, context) | {
        "kind": "error",
        "error": {"type": f"{kind.__module__}.{kind.__qualname__}", "reason": str(err)},
    }


# ---- The mod ----------------------------------------------------------------------------

_unlogged: set[str] = set()


def site_log_for(cfg: DictConfig, node_config: Mapping[str, Any]) -> SiteLog | None:
    """This node's log; ``None`` (with a warning) for a site without a state folder that
    reads no data of its own (in-process tests); an error for a deployed one."""
    name = site_name(node_config)
    if STATE_DIR in node_config or cfg.get("run_dir"):
        return SiteLog(site_state_dir(cfg, node_config) / LOG_FILE, name)
    if DATA_PATH in node_config:
        raise SiteLogError(
            f"site {name} reads its own data ('{DATA_PATH}') but its node config has no "
            f"'{STATE_DIR}': it keeps its audit log there and answers nothing without one"
        )
    if name not in _unlogged:
        _unlogged.add(name)
        log.warning("site %s has no state folder: its replies are not logged", name)
    return None


def make_site_log_mod(get_cfg: Callable[[Context], DictConfig]) -> Mod:
    """A mod that logs every reply the handlers (and inner mods) produce: put it first (a
    ClientApp's own ``mods``), so that what it logs is what leaves the site."""

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        site_log = site_log_for(get_cfg(context), context.node_config)
        if site_log is None:
            return call_next(msg, context)
        site_log.head()  # fail before any work if the log is unwritable or damaged
        try:
            reply = call_next(msg, context)
        except Exception as err:
            site_log.append(error_fields(msg, context, err))
            raise
        site_log.append(reply_fields(msg, reply, context))
        return reply

    return mod


# ---- Verification -----------------------------------------------------------------------


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


def read_entries(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a log (call :func:`verify` first to trust them)."""
    return [json.loads(line) for line in Path(path).read_bytes().splitlines()]


def verify(path: str | Path, anchor: str | None = None) -> LogSummary:
    """Recompute the chain of the log at ``path``; :class:`ChainError` names the first
    line that is wrong. ``anchor``: a head hash recorded earlier, which must be in the log
    (catches entries cut off the end or a rewrite from some entry onwards)."""
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise ChainError(path, None, "empty: not even a genesis header")
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline, as every append leaves it
    if last:
        raise ChainError(path, len(lines) + 1, "truncated last line (no newline at its end)")
    prev = None
    runs, rounds, replies, errors, epsilon = set(), set(), 0, 0, None
    for i, line in enumerate(lines):
        number = i + 1
        entry = _parse(path, number, line)
        if entry["seq"] != i:
            how = "missing before it" if entry["seq"] > i else "out of order or repeated"
            raise ChainError(
                path, number, f"seq {entry['seq']}, expected {i}: entries {how} (reordered?)"
            )
        if i == 0:
            if entry["kind"] != "genesis" or entry["prev"] != GENESIS_PREV:
                raise ChainError(path, number, "the first entry is not a genesis header")
            genesis = entry
        else:
            if entry["prev"] != prev:
                raise ChainError(
                    path, number, f"broken link: prev does not match the hash of line {i}"
                )
            if entry["kind"] not in ("reply", "error"):
                raise ChainError(path, number, f"unknown kind {entry['kind']!r}")
            if entry["site"] != genesis["site"]:
                raise ChainError(
                    path, number, f"site {entry['site']!r} in the log of {genesis['site']!r}"
                )
            runs.add(entry.get("run_id"))
            if entry.get("round") is not None:
                rounds.add(entry["round"])
            if entry["kind"] == "reply":
                replies += 1
                if entry.get("epsilon") is not None:
                    epsilon = entry["epsilon"]
            else:
                errors += 1
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
        replies=replies,
        errors=errors,
        run_ids=tuple(sorted(r for r in runs if r is not None)),
        rounds=tuple(sorted(rounds)),
        last_epsilon=epsilon,
        head=prev,
    )
