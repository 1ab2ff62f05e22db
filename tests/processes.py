"""Run this project's Python in a real child process, as a user would."""

from __future__ import annotations

import subprocess
import sys

from task.constants import REPO_ROOT


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root; output captured, exit code not checked."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
