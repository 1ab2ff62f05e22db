"""In-memory, preprocessed splits: the one shape every data source returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import ArrayDataset, DataLoader
from monai.transforms import Randomizable
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import Dataset, TensorDataset

from task.data.augment import BatchAugment
from task.data.errors import LoadReport
from task.data.preprocess import no_metadata


class WithoutMetadata(Randomizable):
    """Runs a per-image MONAI transform with MONAI's metadata tracking off.

    Why: see :func:`~task.data.preprocess.no_metadata`; per-image augmentation spends
    much of its time tracking metadata nobody reads. The switch is restored after each
    image. Seeding is unchanged in kind: the loader's dataset reseeds this transform per
    image, and this passes the seed on to the wrapped one.
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def set_random_state(self, seed: int | None = None, state=None) -> WithoutMetadata:
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed=seed, state=state)
        return self

    def randomize(self, data=None) -> None:  # the wrapped transform draws its own numbers
        return None

    def __call__(self, image):
        with no_metadata():
            return self.transform(image)


class ImageRows(Dataset):
    """The rows of a read-only image array (a memory-mapped cache, :mod:`task.data.cache`)
    as fresh tensors, one copy per image as it is read; with ``labels``, ``(image, label)``
    pairs, as a ``TensorDataset`` gives.

    Why: torch cannot wrap read-only memory (``torch.from_numpy`` warns, and a write through
    such a tensor would crash the process); copying the whole array would undo the map's
    point. A copy per image is what a batch costs anyway, since batches are stacked copies.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.images = images
        self.labels = None if labels is None else torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        image = torch.from_numpy(np.array(self.images[i]))
        return image if self.labels is None else (image, self.labels[i])


@dataclass
class Split:
    """Preprocessed images ``(N, C, H, W)`` float32 and integer labels ``(N,)``, with the
    content hash of the images as read (:mod:`task.data.content`) where the source knows
    it; a subset or a cached copy has none."""

    images: np.ndarray
    labels: np.ndarray
    fingerprint: str | None = None

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
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> DataLoader | TorchDataLoader | BatchAugmented:
        """A data loader over the in-memory arrays; ``augment`` runs on the fly. The
        workers and pinning: :func:`task.runtime.device.loader_options`.

        A per-image transform runs in MONAI's ``ArrayDataset``. Without one, or with a
        :class:`~task.data.augment.BatchAugment`, the batches come straight from the tensors:
        MONAI's per-item dataset machinery costs far more per image than the tensors' own
        indexing, a sizeable share of a site's round.
        """
        read_only = not self.images.flags.writeable  # memory-mapped from the site's cache
        workers = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        if augment is not None and not isinstance(augment, BatchAugment):
            dataset = ArrayDataset(
                img=ImageRows(self.images) if read_only else torch.from_numpy(self.images),
                img_transform=WithoutMetadata(augment),
                labels=self.labels,
            )
            return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **workers)
        tensors = (
            ImageRows(self.images, self.labels)
            if read_only
            else TensorDataset(torch.from_numpy(self.images), torch.from_numpy(self.labels))
        )
        loader = TorchDataLoader(tensors, batch_size=batch_size, shuffle=shuffle, **workers)
        return BatchAugmented(loader, augment) if augment is not None else loader


class BatchAugmented:
    """A loader whose image batches pass through a :class:`BatchAugment` as they come out
    (in the training process, after the workers, so its draws follow the seeded global
    generator)."""

    def __init__(self, loader: DataLoader, augment: BatchAugment) -> None:
        self.loader, self.augment = loader, augment

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield self.augment(torch.as_tensor(images)), labels


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
