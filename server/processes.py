"""The processes of a deployment: finding what a process started, and stopping it all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ...;
    field N of proc(5) is index N - 3), or None when the process is gone (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # the process ended while we looked
        return None


def process_table() -> dict[int, list[str]]:
    """:func:`stat_fields` of every process, read once."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = stat_fields(int(entry.name))
        if fields is not None:
            table[int(entry.name)] = fields
    return table


def descendants(pid: int, table: dict[int, list[str]] | None = None) -> list[int]:
    """Every process below ``pid``, from ``table`` (default: :func:`process_table` now)."""
    children: dict[int, list[int]] = {}
    for child, fields in (process_table() if table is None else table).items():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Stopped(SystemExit):
    """The launcher was told to stop (SIGTERM or SIGINT); exit code 128 + the signal."""


def raise_stopped(signum: int, _frame) -> None:
    raise Stopped(128 + signum)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
