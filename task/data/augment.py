"""Training augmentation of a whole batch at once, with the semantics of MONAI's per-image
``RandAdjustContrast``, ``RandScaleIntensity``, ``RandAffine`` and ``RandFlip``.

Why: MONAI's array transforms take one image at a time, and at PneumoniaMNIST's 28 px the
per-image Python work, not the arithmetic, is the cost, as much as training the network
itself (docs/results-history.md). Here every image still gets its own
random parameters, drawn as MONAI draws them, but the arithmetic runs once per batch:
intensity changes as tensor expressions, the affine through MONAI's batched
:class:`~monai.networks.layers.AffineTransform` with matrices from MONAI's own
``create_rotate`` / ``create_translate`` / ``create_scale``. A test checks each step
against the per-image MONAI transform given the same parameters.

Randomness comes from torch's global generator, which the training loops seed
(``monai.utils.set_determinism``) at the start of every epoch or round, so an augmented
epoch is reproducible from the run's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.layers import AffineTransform
from monai.transforms.utils import create_rotate, create_scale, create_translate

#: MONAI's ``AdjustContrast`` guards the division by the image's range with this.
CONTRAST_EPS = 1e-7


@dataclass
class BatchParams:
    """One batch's random draws (``apply`` masks hold which images a step changes)."""

    contrast: torch.Tensor  # (N,) bool
    gamma: torch.Tensor  # (N,)
    scale: torch.Tensor  # (N,) bool
    factor: torch.Tensor  # (N,)
    affine: torch.Tensor  # (N,) bool
    angle: torch.Tensor  # (N,) radians
    zoom: torch.Tensor  # (N, 2), per spatial axis
    shift: torch.Tensor  # (N, 2), pixels per spatial axis
    flip: torch.Tensor  # (N,) bool


class BatchAugment:
    """Random contrast, intensity scale, affine and left-right flip for ``(N, C, H, W)``.

    Args:
        contrast_prob: probability of a gamma contrast change per image.
        gamma: range of the gamma, as MONAI's ``RandAdjustContrast(gamma=...)``.
        scale_prob: probability of an intensity scale per image.
        factor: intensity scale ``1 + U(-factor, factor)`` (``RandScaleIntensity``).
        affine_prob: probability of the affine per image.
        rotate_range: rotation ``U(-r, r)`` radians about the image centre.
        scale_range: zoom ``1 + U(-s, s)`` per spatial axis, drawn independently.
        translate_range: shift ``U(-t, t)`` pixels per spatial axis.
        flip_prob: probability of flipping the last axis (left-right in a radiograph).

    Pixels the affine brings in from outside the image are zeros, as ``padding_mode:
    zeros`` in MONAI's ``RandAffine``; bilinear interpolation.
    """

    def __init__(
        self,
        contrast_prob: float = 0.5,
        gamma: Sequence[float] = (0.7, 1.5),
        scale_prob: float = 0.5,
        factor: float = 0.2,
        affine_prob: float = 0.8,
        rotate_range: float = 0.17,
        scale_range: float = 0.1,
        translate_range: float = 0.0,
        flip_prob: float = 0.5,
    ) -> None:
        for name, p in [
            ("contrast_prob", contrast_prob),
            ("scale_prob", scale_prob),
            ("affine_prob", affine_prob),
            ("flip_prob", flip_prob),
        ]:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"BatchAugment: {name}={p} is not a probability in [0, 1]")
        if len(gamma) != 2 or not 0.0 < gamma[0] <= gamma[1]:
            raise ValueError(
                f"BatchAugment: gamma={list(gamma)} must be (low, high), 0 < low <= high"
            )
        for name, r in [
            ("factor", factor),
            ("rotate_range", rotate_range),
            ("scale_range", scale_range),
            ("translate_range", translate_range),
        ]:
            if r < 0:
                raise ValueError(f"BatchAugment: {name}={r} must be >= 0")
        if scale_range >= 1.0:
            raise ValueError(f"BatchAugment: scale_range={scale_range} must be < 1 (zoom > 0)")
        self.contrast_prob, self.gamma = float(contrast_prob), (float(gamma[0]), float(gamma[1]))
        self.scale_prob, self.factor = float(scale_prob), float(factor)
        self.affine_prob, self.rotate_range = float(affine_prob), float(rotate_range)
        self.scale_range, self.translate_range = float(scale_range), float(translate_range)
        self.flip_prob = float(flip_prob)
        # Pull-direction matrices in normalised coordinates (MONAI's ``Affine`` samples pixel
        # centres with align_corners=False; see ``matrices``).
        self._warp = AffineTransform(
            normalized=True, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    def draw(self, n: int) -> BatchParams:
        """Random parameters for ``n`` images from torch's global generator."""

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.rand(n, *shape, dtype=torch.float64) * (high - low) + low

        return BatchParams(
            contrast=torch.rand(n) < self.contrast_prob,
            gamma=uniform(*self.gamma),
            scale=torch.rand(n) < self.scale_prob,
            factor=uniform(-self.factor, self.factor),
            affine=torch.rand(n) < self.affine_prob,
            angle=uniform(-self.rotate_range, self.rotate_range),
            zoom=1.0 + uniform(-self.scale_range, self.scale_range, 2),
            shift=uniform(-self.translate_range, self.translate_range, 2),
            flip=torch.rand(n) < self.flip_prob,
        )

    def matrices(self, params: BatchParams, size: Sequence[int]) -> torch.Tensor:
        """``(N, 3, 3)`` pull-direction affines for images of spatial ``size``.

        Each is composed as MONAI's ``AffineGrid`` does (rotate, then translate, then scale,
        in pixel units about the image centre) and moved to the normalised coordinates that
        ``grid_sample`` uses: a centred pixel offset ``c`` sits at ``2c / n``.
        """
        to_norm = torch.diag(torch.tensor([2.0 / n for n in size] + [1.0], dtype=torch.float64))
        from_norm = torch.linalg.inv(to_norm)
        pixel = torch.stack(
            [
                torch.as_tensor(
                    create_rotate(2, float(a))
                    @ create_translate(2, s.tolist())
                    @ create_scale(2, z.tolist())
                )
                for a, s, z in zip(params.angle, params.shift, params.zoom, strict=True)
            ]
        )
        return (to_norm @ pixel @ from_norm).float()

    def apply(self, images: torch.Tensor, params: BatchParams) -> torch.Tensor:
        """The augmentation with given parameters (the order of the MONAI pipeline)."""
        if images.ndim != 4:
            raise ValueError(f"BatchAugment takes (N, C, H, W) batches, got {tuple(images.shape)}")
        if len(images) == 0:  # a Poisson-sampled (DP) batch may be empty
            return images
        x = images.float()

        def per_image(v: torch.Tensor) -> torch.Tensor:
            return (v if v.dtype == torch.bool else v.to(x.dtype)).view(-1, 1, 1, 1)

        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        span = x.amax(dim=(1, 2, 3), keepdim=True) - lo
        adjusted = ((x - lo) / (span + CONTRAST_EPS)) ** per_image(params.gamma) * span + lo
        x = torch.where(per_image(params.contrast), adjusted, x)
        x = torch.where(per_image(params.scale), x * (1.0 + per_image(params.factor)), x)
        if bool(params.affine.any()):
            warped = self._warp(x, self.matrices(params, x.shape[2:]))
            x = torch.where(per_image(params.affine), warped, x)
        return torch.where(per_image(params.flip), x.flip(-1), x)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images, self.draw(len(images)))
