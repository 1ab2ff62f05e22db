"""Batch augmentation: each step equals MONAI's per-image transform given the same draws."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import AdjustContrast, Affine, Flip, ScaleIntensity

from task.data.augment import BatchAugment, BatchParams


def _images(n: int = 12, size: tuple[int, int] = (28, 28)) -> torch.Tensor:
    return torch.randn(n, 1, *size, generator=torch.Generator().manual_seed(0))


def _monai_one(image: torch.Tensor, p: BatchParams, i: int) -> torch.Tensor:
    """Image ``i`` through MONAI's own array transforms with the batch's draws."""
    if p.contrast[i]:
        image = AdjustContrast(gamma=float(p.gamma[i]))(image)
    if p.scale[i]:
        image = ScaleIntensity(minv=None, maxv=None, factor=float(p.factor[i]))(image)
    if p.affine[i]:
        image = Affine(
            rotate_params=float(p.angle[i]),
            translate_params=p.shift[i].tolist(),
            scale_params=p.zoom[i].tolist(),
            padding_mode="zeros",
            mode="bilinear",
            image_only=True,
        )(image)
    if p.flip[i]:
        image = Flip(spatial_axis=1)(image)
    return torch.as_tensor(image)


@pytest.mark.parametrize("size", [(28, 28), (20, 32)])
def test_every_step_matches_monai_per_image_transforms(size: tuple[int, int]) -> None:
    images = _images(32, size)
    augment = BatchAugment(translate_range=2.24)
    torch.manual_seed(3)
    params = augment.draw(len(images))
    for mask in (params.contrast, params.scale, params.affine, params.flip):
        assert 0 < int(mask.sum()) < len(images)  # both branches of every step are exercised
    out = augment.apply(images, params)
    expected = torch.stack([_monai_one(img, params, i) for i, img in enumerate(images)])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_draws_follow_the_seeded_global_generator() -> None:
    images, augment = _images(), BatchAugment(translate_range=2.0)
    torch.manual_seed(5)
    first = augment(images)
    torch.manual_seed(5)
    assert torch.equal(first, augment(images))
    assert not torch.equal(first, augment(images))
    assert not torch.equal(first, images)


def test_probability_zero_leaves_the_batch_unchanged_and_an_empty_batch_passes() -> None:
    off = BatchAugment(contrast_prob=0.0, scale_prob=0.0, affine_prob=0.0, flip_prob=0.0)
    images = _images()
    assert torch.equal(off(images), images)
    empty = images[:0]
    assert BatchAugment()(empty).shape == empty.shape  # a Poisson-sampled DP batch


def test_a_single_image_is_refused_with_its_shape() -> None:
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        BatchAugment()(torch.zeros(1, 28, 28))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"flip_prob": 1.5}, "flip_prob=1.5"),
        ({"gamma": (1.5, 0.7)}, r"gamma=\[1.5, 0.7\]"),
        ({"rotate_range": -0.1}, "rotate_range=-0.1"),
        ({"scale_range": 1.0}, "scale_range=1.0"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchAugment(**kwargs)
