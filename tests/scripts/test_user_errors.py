"""A user's mistake prints one line naming it, not a traceback (HYDRA_FULL_ERROR=1: the
traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra.errors import InstantiationException

from scripts.user_errors import one_line_errors
from task.constants import REPO_ROOT
from tests.factories import pattern, write_png


def _failing(err: BaseException):
    @one_line_errors
    def task(cfg):
        raise err

    return task


def test_a_user_error_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        _failing(ValueError("privacy.epsilon=-1 must be\n a positive finite number"))(None)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: privacy.epsilon=-1 must be a positive finite number")


def test_a_failed_target_call_names_its_cause(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    wrapped = InstantiationException("Error in call to target 'x.Y':\nValueError('bad')")
    wrapped.__cause__ = ValueError("privacy.delta=2 must be in (0, 1)")
    with pytest.raises(SystemExit):
        _failing(wrapped)(None)
    assert capsys.readouterr().err.startswith("error: privacy.delta=2 must be in (0, 1)")


def test_with_hydra_full_error_the_error_propagates(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="bad value"):
        _failing(ValueError("bad value"))(None)


def test_a_bug_is_not_shortened(monkeypatch):
    """Only a user's errors are: a bug keeps its traceback."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(ZeroDivisionError):
        _failing(ZeroDivisionError("division by zero"))(None)


@pytest.mark.slow
def test_class_folders_unlike_the_config_print_one_line(tmp_path):
    """The case that printed a traceback: class folders named in another case."""
    for cls in ("Normal", "Pneumonia"):
        write_png(tmp_path / "site" / cls / "1.png", pattern())
    cmd = [
        sys.executable,
        "-m",
        "scripts.train_central",
        "data=folder",
        f"data.train={tmp_path / 'site'}",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "['Normal', 'Pneumonia']" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    full = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env | {"HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True
    )
    assert full.returncode != 0 and "Traceback" in full.stderr
