"""Plumbing shared by the coordinator's and the hospital's entry points (Flower-free).

Each organisation runs one Flower process in the foreground of its own terminal or
service manager; these helpers check what it typed and run that process so that a stop
(Ctrl-C, ``systemctl stop``) reaches it and everything it started.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

#: Exit code of a command given bad input (argparse uses the same).
BAD_INPUT = 2
FORWARDED = (signal.SIGTERM, signal.SIGINT)


class InputError(ValueError):
    """A value or file the user gave is unusable; the message names it."""


def fail(message: str) -> int:
    """Print a one-line error and return the bad-input exit code."""
    print(f"error: {message}", file=sys.stderr)
    return BAD_INPUT


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` for an IPv6 address) as ``(host, port)``."""
    bad = InputError(f"address {address!r} is not HOST:PORT with a port in 1..65535")
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif ":" in host:  # an IPv6 address without brackets is ambiguous
        raise bad
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise bad
    return host, int(port)


def existing_file(path: Path, what: str) -> Path:
    """``path``, resolved, if it is a readable file; else InputError naming it."""
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist or is not a file")
    return path.resolve()


def flower_env(**extra: str) -> dict[str, str]:
    """This environment with the virtualenv's Flower executables first on PATH (the
    SuperLink and SuperNode start ``flwr-serverapp`` / ``flwr-clientapp`` from there) and
    Flower's update check off."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        **extra,
    }


#: Exit code when the companion ended first and the main process was stopped for it.
COMPANION_EXITED = 3


def wait_with_companion(
    proc: subprocess.Popen,
    companion: subprocess.Popen | None,
    expected: Callable[[], bool] = lambda: False,
) -> int:
    """``proc``'s exit code; if ``companion`` exits first, ``proc``'s group is stopped and
    :data:`COMPANION_EXITED` returned. Why: a SuperNode whose warm executor died stays
    online with nobody to run its messages, and every secure round would wait out its
    stage timeout for this site; stopped, the site shows offline. ``expected()``: True
    once the caller is stopping both itself, so the companion's exit is no fault."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if expected():
            continue
        if companion is not None and (gone := companion.poll()) is not None:
            print(
                f"error: {shlex.join(companion.args[:3])} exited with code {gone}; "
                "stopping the SuperNode beside it",
                file=sys.stderr,
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            return COMPANION_EXITED


def run_foreground(
    argv: Sequence[str],
    env: dict[str, str] | None = None,
    companion: Callable[[int], list[str]] | None = None,
) -> int:
    """Run ``argv`` until it exits, forwarding SIGTERM and SIGINT to its process group
    (its own, so the ServerApp / ClientApp processes it starts get them too).
    ``companion(pid)``: the argv of a process started beside it in the same group (a
    SuperNode's warm executor, given the SuperNode's pid), stopped with it; if the
    companion ends first, ``argv`` is stopped too (:func:`wait_with_companion`).
    Returns its exit code, ``128 + signal`` if a signal ended it, as shells report."""
    pending: list[int] = []
    forwarded: list[int] = []
    proc: subprocess.Popen | None = None

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        if proc is None:  # not started yet: deliver once it is
            pending.append(signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        # Its own process group, in this session: the companion can join that group only
        # from the same session (setpgid), and killpg stops both.
        proc = subprocess.Popen(list(argv), env=env, process_group=0)
        beside = None
        if companion is not None:
            try:
                beside = subprocess.Popen(companion(proc.pid), env=env, process_group=proc.pid)
            except OSError:  # it has already exited (its group is gone): report its code
                if proc.poll() is None:
                    raise
        for signum in pending:
            forward(signum, None)
        # Once a signal was forwarded both are stopping: the companion may end first.
        code = wait_with_companion(proc, beside, expected=lambda: bool(forwarded))
        with contextlib.suppress(ProcessLookupError):  # the companion, if still there
            os.killpg(proc.pid, signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
