"""Atomic checkpoint writes: a failed save leaves the previous checkpoint intact."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from task.runtime import checkpoint
from tests.processes import run_python


def test_roundtrip(tmp_path: Path) -> None:
    path = checkpoint.save_atomic({"w": torch.arange(3), "round": 2}, tmp_path / "c.pt")
    state = checkpoint.load(path)
    assert state["round"] == 2 and torch.equal(state["w"], torch.arange(3))


def test_failed_write_keeps_previous_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = checkpoint.save_atomic({"round": 1}, tmp_path / "c.pt")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save_atomic({"round": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["round"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_read_only_filesystem_at_rename_keeps_previous(tmp_path: Path, monkeypatch) -> None:
    path = checkpoint.save_atomic({"round": 1}, tmp_path / "c.pt")

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(OSError, match="Read-only"):
        checkpoint.save_atomic({"round": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["round"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]


def test_missing_checkpoint_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        checkpoint.load(tmp_path / "nope.pt")


# -- the same faults on a real file system, in a real process --------------------------

_SAVE = """
import signal, sys, torch
from task.runtime import checkpoint
from task.constants import REPO_ROOT
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit: EFBIG, not a kill
{setup}
try:
    checkpoint.save_atomic({{"round": 2, "w": torch.zeros(1 << 20)}}, sys.argv[1])
except OSError as err:
    print(f"checkpoint not written: {{err}}", file=sys.stderr)
    sys.exit(3)
"""


def _save_in_child(path: Path, setup: str = "") -> subprocess.CompletedProcess:
    return run_python("-c", _SAVE.format(setup=setup), str(path))


def _previous_intact(folder: Path) -> None:
    assert checkpoint.load(folder / "c.pt")["round"] == 1
    assert sorted(os.listdir(folder)) == ["c.pt"]  # no temporary file left behind


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A small RAM file system of ``size`` at ``folder`` (needs the right to mount)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_file_size_limit_in_a_real_process_keeps_previous(tmp_path: Path) -> None:
    checkpoint.save_atomic({"round": 1}, tmp_path / "c.pt")
    proc = _save_in_child(
        tmp_path / "c.pt",
        "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16,) * 2)",
    )
    assert proc.returncode == 3, proc.stderr
    assert "checkpoint not written: [Errno 27] File too large" in proc.stderr
    _previous_intact(tmp_path)


def test_full_disk_in_a_real_process_keeps_previous(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "1m") as disk:  # the new checkpoint needs 4 MB
        checkpoint.save_atomic({"round": 1}, disk / "c.pt")
        proc = _save_in_child(disk / "c.pt")
        assert proc.returncode == 3, proc.stderr
        assert "checkpoint not written: [Errno 28] No space left on device" in proc.stderr
        _previous_intact(disk)


def test_read_only_file_system_in_a_real_process_keeps_previous(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", "16m") as disk:
        checkpoint.save_atomic({"round": 1}, disk / "c.pt")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        proc = _save_in_child(disk / "c.pt")
        assert proc.returncode == 3, proc.stderr
        assert "checkpoint not written: [Errno 30] Read-only file system" in proc.stderr
        _previous_intact(disk)


def test_an_inference_checkpoint_is_read_or_refused_by_problem(tmp_path: Path) -> None:
    """The reading that evaluation and encrypted serving share: the config and weights of
    a checkpoint training wrote; each other file refused with its problem and its name."""
    config = dict.fromkeys(checkpoint.INFERENCE_KEYS, 1)
    weights = {"w": torch.ones(2)}
    good = checkpoint.save_atomic({"config": config, "model": weights}, tmp_path / "best.pt")
    got_config, got_weights = checkpoint.read_inference_checkpoint(good)
    assert got_config == config and torch.equal(got_weights["w"], weights["w"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = {
        tmp_path / "junk.pt": ("unreadable", "junk.pt: not a readable checkpoint ("),
        checkpoint.save_atomic({"model": weights}, tmp_path / "bare.pt"): (
            "no-config",
            f"bare.pt: has no inference config with keys {list(checkpoint.INFERENCE_KEYS)}",
        ),
        checkpoint.save_atomic({"config": config}, tmp_path / "last.pt"): (
            "no-weights",
            "last.pt: has no 'model' weights",
        ),
    }
    for path, (problem, message) in cases.items():
        with pytest.raises(checkpoint.NotAnInferenceCheckpoint) as err:
            checkpoint.read_inference_checkpoint(path)
        assert err.value.problem == problem and message in str(err.value)
    with pytest.raises(FileNotFoundError):
        checkpoint.read_inference_checkpoint(tmp_path / "missing.pt")
