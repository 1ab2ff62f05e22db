"""Atomic checkpoint writes: a failed save leaves the previous checkpoint intact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from task import checkpoint


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
