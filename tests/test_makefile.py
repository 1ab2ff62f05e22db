"""make setup's torch build: TORCH=cpu (the default) or TORCH=cuda, each with its own stamp
and check, and any other value refused at once. ``make -n`` prints the commands only."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from task.constants import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-n", "setup", "VENV=/nonexistent-venv", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_default_installs_the_cpu_wheel_and_refuses_nvidia_packages():
    out = _dry_run().stdout
    assert '"torch==2.13.0"' in out
    assert "check_install.py --torch cpu" in out
    assert "touch /nonexistent-venv/.setup-done-cpu" in out


def test_torch_cuda_asks_for_the_exact_release_and_checks_for_the_cuda_build():
    out = _dry_run("TORCH=cuda").stdout
    assert '"torch===2.13.0"' in out  # never the local 2.13.0+cpu wheel
    assert "check_install.py --torch cuda" in out
    assert "echo cuda > /nonexistent-venv/.torch-build" in out
    assert "touch /nonexistent-venv/.setup-done-cuda" in out


def test_another_build_is_refused_by_name():
    run = _dry_run("TORCH=rocm")
    assert run.returncode != 0
    assert "TORCH=rocm is not a torch build" in run.stderr
