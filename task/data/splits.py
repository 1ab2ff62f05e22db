"""In-memory, preprocessed splits: the one shape every data source returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import ArrayDataset, DataLoader
from sklearn.model_selection import train_test_split

from task.data.errors import LoadReport


@dataclass
class Split:
    """Preprocessed images ``(N, C, H, W)`` float32 and integer labels ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels in one split"
            )
        self.labels = self.labels.astype(np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        return Split(self.images[index], self.labels[index])

    def stratified_split(self, fraction: float, seed: int) -> tuple[Split, Split]:
        """Split off ``fraction`` of the examples, stratified by class when every present
        class has at least two examples; returns ``(rest, held_out)`` in original order."""
        index = np.arange(len(self))
        counts = np.bincount(self.labels)
        stratify = self.labels if counts[counts > 0].min() >= 2 else None
        rest, held = train_test_split(
            index, test_size=fraction, random_state=seed, stratify=stratify
        )
        return self.subset(np.sort(rest)), self.subset(np.sort(held))

    def class_counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).tolist()

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: Callable | None = None,
        num_workers: int = 0,
    ) -> DataLoader:
        """A MONAI data loader; ``augment`` runs per image, on the fly."""
        dataset = ArrayDataset(
            img=torch.from_numpy(self.images), img_transform=augment, labels=self.labels
        )
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers)


@dataclass
class DataSplits:
    """Train, validation and test splits with the class list and the load report."""

    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    report: LoadReport = field(default_factory=LoadReport)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]
