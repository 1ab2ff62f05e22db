"""What the centralised loop's checkpoints hold, so that training resumes exactly.

Flower-free. A resumed run must reach the same weights as an uninterrupted one, bit for
bit: besides weights, optimizer, scheduler and where the loop stood (:class:`Progress`),
``last.pt`` carries torch's, numpy's and Python's random states and the generator of the
training set's per-image augmentation. :func:`checkpoint_state` writes what
:func:`restore` reads back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable

from task.constants import CHECKPOINT_BEST
from task.runtime import checkpoint


def np_state(state: tuple) -> dict[str, Any]:
    """A numpy ``RandomState`` state as tensors, loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def np_tuple(state: dict[str, Any]) -> tuple:
    """The inverse of :func:`np_state`: the tuple ``RandomState.set_state`` takes."""
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])


def rng_state() -> dict[str, Any]:
    """The process-wide random states (torch's also drives batch augmentation), and the
    GPUs' where this process has used CUDA (dropout on a GPU draws from them)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np_state(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_initialized():  # never on a CPU run: its checkpoint stays as it was
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` captured; the GPUs' states only on a machine with as
    many GPUs (a run resumed on the CPU has no use for them)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(np_tuple(state["numpy"]))
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def loader_rng_state(train_loader) -> dict[str, Any] | None:
    """The generator that per-image augmentation draws from, if the dataset has one."""
    if isinstance(train_loader.dataset, Randomizable):
        return np_state(train_loader.dataset.R.get_state())
    return None


@dataclass
class Progress:
    """Where the loop stands: the history and the counters that best-model selection and
    early stopping read; saved in every checkpoint so that a resumed run carries on."""

    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 1
    best_mcc: float = -float("inf")
    best_epoch: int = 0
    stale: int = 0

    @classmethod
    def of(cls, state: dict[str, Any]) -> Progress:
        """Where the run that saved ``state`` stood: it goes on from the next epoch."""
        return cls(
            history=list(state["history"]),
            start_epoch=state["epoch"] + 1,
            best_mcc=state["best_mcc"],
            best_epoch=state["best_epoch"],
            stale=state["stale"],
        )

    def record(self, row: dict[str, Any]) -> bool:
        """Add an epoch's row; whether its validation MCC is a new best."""
        self.history.append(row)
        improved = row["val_mcc"] > self.best_mcc
        if improved:
            self.best_mcc, self.best_epoch, self.stale = row["val_mcc"], row["epoch"], 0
        else:
            self.stale += 1
        return improved


def checkpoint_state(
    *,
    model: torch.nn.Module,
    ema,
    optimizer: torch.optim.Optimizer,
    scheduler,
    train_loader,
    epoch: int,
    done: Progress,
    extra_state: dict[str, Any] | None,
) -> dict[str, Any]:
    """Everything :func:`restore` puts back after ``epoch``, plus ``extra_state``."""
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "best_mcc": done.best_mcc,
        "best_epoch": done.best_epoch,
        "stale": done.stale,
        "history": done.history,
        "rng": rng_state(),
        # Per-image augmentation draws from the dataset's generator; batch augmentation
        # from torch's, which "rng" holds.
        "loader_rng": loader_rng_state(train_loader),
        **(extra_state or {}),
    }


def restore(
    resume, model, optimizer, scheduler, train_loader, run_dir: Path, ema=None
) -> dict[str, Any]:
    """Load ``last.pt`` into the live objects (weights, optimizer, scheduler, random states).

    When resuming into a new run directory, the best model so far is copied along, so that
    ``best.pt`` exists there even if no later epoch improves on it.
    """
    state = checkpoint.load(resume)
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if isinstance(train_loader.dataset, Randomizable):  # per-image augmentation's generator
        loader_rng = np.random.RandomState()
        loader_rng.set_state(np_tuple(state["loader_rng"]))
        train_loader.dataset.set_random_state(state=loader_rng)
    source_best = Path(resume).with_name(CHECKPOINT_BEST)
    if source_best.is_file() and source_best.resolve() != (run_dir / CHECKPOINT_BEST).resolve():
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.save_atomic(checkpoint.load(source_best), run_dir / CHECKPOINT_BEST)
    return state
