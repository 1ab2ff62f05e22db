"""The processes of a deployment: finding what a process started, and stopping it all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
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


def kill_trees(procs: Sequence[subprocess.Popen]) -> None:
    """SIGKILL each process's group and everything below it (a crash: no shutdown handlers
    run), all listed before any dies so that none is missed as an orphan."""
    victims = [pid for proc in procs for pid in (proc.pid, *descendants(proc.pid))]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    signal_all(victims, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=30)


def stop_trees(procs: Sequence[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM each process's group and every process below it, in order (a descendant
    that left its group, such as a ClientApp or a ServerApp, is signalled by pid); SIGKILL
    what has not ended after ``grace`` seconds, so that a stop always leaves nothing."""
    started = [descendants(proc.pid) for proc in procs]
    for proc, below in zip(procs, started, strict=True):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        signal_all(below, signal.SIGTERM)
    for proc, below in zip(procs, started, strict=True):
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        signal_all(below, signal.SIGKILL)
