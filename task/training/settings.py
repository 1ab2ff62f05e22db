"""The settings of the centralised loop (the ``train`` block of the config), checked.

Flower-free; re-exported by :mod:`task.training.central`, whose ``fit`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from task.runtime.run_options import check_selection


@dataclass
class TrainSettings:
    """Settings of the centralised loop (the ``train`` block of the config)."""

    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 256
    early_stopping_patience: int | None = None
    max_steps_per_epoch: int | None = None
    class_weighted_loss: bool = True
    #: Keep an exponential moving average of the weights (decay per step) and validate,
    #: select and save *it*; None trains and selects the raw weights.
    ema_decay: float | None = None
    #: Which weights are tested and reported: ``best.pt`` (the best validation MCC, as PriMIA
    #: chose; always written) or ``final.pt`` (the last epoch's; with a schedule annealed
    #: to zero and the EMA, the intended end point).
    selection: str = "val_mcc"
    #: DataLoader worker processes: a count, or ``auto`` (none on the CPU, some on CUDA;
    #: :func:`task.runtime.device.loader_options`).
    num_workers: int | str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size} must be at least 1")
        check_selection(self.selection, "train.selection")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay={self.ema_decay} must be in (0, 1) or null")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(
                f"train.early_stopping_patience={self.early_stopping_patience} must be >= 1"
            )
