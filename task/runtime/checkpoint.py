"""Atomic checkpoints: a crash or a full disk while saving never damages the last good one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from task.runtime.atomic import write_atomic, write_text_atomic

__all__ = ["load", "save_atomic", "write_atomic", "write_text_atomic"]


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save``, atomically."""
    return write_atomic(path, lambda fh: torch.save(state, fh))


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (weights-only safe unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)
