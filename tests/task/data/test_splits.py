"""The in-memory split's training loader: augmentation per image (without MONAI's
metadata) or per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from monai.data import MetaTensor, get_track_meta
from monai.utils import set_determinism

from task.config import compose_config
from task.data.splits import Split, WithoutMetadata


def _split(n: int = 48) -> Split:
    rng = np.random.default_rng(0)
    return Split(rng.normal(size=(n, 1, 28, 28)).astype(np.float32), rng.integers(0, 2, n))


def _augment(option: str = "per_image"):
    return instantiate(compose_config(["logger=none", f"transforms={option}"]).transforms.augment)


def _epoch(split: Split, augment, seed: int) -> torch.Tensor:
    set_determinism(seed=seed)
    batches = [x for x, _ in split.loader(16, shuffle=True, augment=augment)]
    assert all(type(b) is torch.Tensor for b in batches)  # plain tensors, no MetaTensor
    return torch.cat(batches)


@pytest.mark.parametrize("option", ["per_image", "default"])
def test_augmented_batches_are_reproducible_random_and_leave_tracking_on(option: str) -> None:
    split, augment = _split(), _augment(option)
    assert get_track_meta()
    first, again = _epoch(split, augment, seed=1), _epoch(split, augment, seed=1)
    assert torch.equal(first, again)  # same seed, same augmented epoch
    assert not torch.equal(first, _epoch(split, augment, seed=2))
    assert get_track_meta()  # MONAI's process-wide switch is restored


def test_the_wrapper_restores_tracking_even_when_the_transform_fails() -> None:
    def failing(image):
        assert not get_track_meta()
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        WithoutMetadata(failing)(torch.zeros(1, 4, 4))
    assert get_track_meta()


def test_the_wrapped_transform_gives_plain_tensors_and_the_same_pixels_as_unwrapped() -> None:
    augment = _augment()
    image = torch.from_numpy(_split(1).images[0])
    augment.set_random_state(seed=7)
    tracked = augment(image)
    wrapped = WithoutMetadata(augment).set_random_state(seed=7)
    untracked = wrapped(image)
    assert type(untracked) is torch.Tensor and not isinstance(untracked, MetaTensor)
    assert torch.equal(torch.as_tensor(tracked), untracked)


def test_a_batch_augmentation_keeps_the_loader_s_length_labels_and_dataset() -> None:
    split = _split(40)
    plain = split.loader(16, shuffle=False)
    augmented = split.loader(16, shuffle=False, augment=_augment("default"))
    assert len(augmented) == len(plain) == 3
    assert augmented.dataset is augmented.loader.dataset  # Opacus reads loader.dataset
    for (x, y), (x0, y0) in zip(augmented, plain, strict=True):
        assert torch.equal(torch.as_tensor(y), torch.as_tensor(y0))
        assert x.shape == x0.shape and not torch.equal(x, x0)
