"""Atomic checkpoints: a crash or a full disk while saving never damages the last good one.

Checkpoints hold CPU tensors and load onto the CPU, whatever device trained them: a model
trained on a GPU is evaluated, served or resumed on a machine without one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from task.runtime.atomic import write_atomic, write_text_atomic

__all__ = [
    "INFERENCE_KEYS",
    "NotAnInferenceCheckpoint",
    "load",
    "on_cpu",
    "read_inference_checkpoint",
    "save_atomic",
    "write_atomic",
    "write_text_atomic",
]

#: Keys a checkpoint's ``config`` holds when training wrote it (``best.pt``, ``final.pt``):
#: what evaluation and encrypted serving rebuild the network and its preprocessing from.
INFERENCE_KEYS = ("model", "preprocess", "classes", "resolution", "channels")


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (nested in dicts, lists and tuples) on the CPU.

    Tensors already there are kept as they are, the same objects: a CPU run's checkpoint is
    what it was before. A dict is copied with its type and attributes (a state dict's
    ``_metadata``, which ``load_state_dict`` reads).
    """
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        out = copy.copy(value)
        for key, item in value.items():
            out[key] = on_cpu(item)
        return out
    if type(value) in (list, tuple):
        return type(value)(on_cpu(item) for item in value)
    return value


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save``, atomically, its tensors on the CPU."""
    state = on_cpu(state)
    return write_atomic(path, lambda fh: torch.save(state, fh))


def load(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (weights-only safe unpickling),
    onto the CPU: the caller's ``load_state_dict`` copies it to wherever its model is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


class NotAnInferenceCheckpoint(ValueError):
    """A file that is no checkpoint written by training. ``problem`` says which check
    failed (``unreadable``, ``no-config``, ``no-weights``), so that evaluation and serving
    each raise their own error type with their own advice; the message names the file."""

    def __init__(self, path: Path, problem: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.problem, self.reason = path, problem, reason


def read_inference_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inference ``config`` (with every key of :data:`INFERENCE_KEYS`) and the ``model``
    weights of a checkpoint written by training; :class:`FileNotFoundError` for a missing
    file, :class:`NotAnInferenceCheckpoint` for any other."""
    path = Path(path)
    try:
        state = load(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch.load: truncated file, not a checkpoint, unsafe pickle
        reason = f"not a readable checkpoint ({err})"
        raise NotAnInferenceCheckpoint(path, "unreadable", reason) from err
    config = state.get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or any(key not in config for key in INFERENCE_KEYS):
        reason = f"has no inference config with keys {list(INFERENCE_KEYS)}"
        raise NotAnInferenceCheckpoint(path, "no-config", reason)
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise NotAnInferenceCheckpoint(path, "no-weights", "has no 'model' weights")
    return config, weights
