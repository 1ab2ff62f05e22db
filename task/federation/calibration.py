"""A site's part in calibrating a network that standardises with the federation's moments.

Networks such as :class:`task.models.scatternet.ScatterNetLinear` standardise each feature with
its mean and second moment over the federation's training images. In round 1 each site
sets them from its own images; the server's weighted average of the sites' models (weights:
the examples, as for every array) then holds the pooled moments, and from round 2 on the
global model is calibrated and no site computes them again.

Under local DP the release is a Gaussian mechanism, accounted in the site's ledger before
it happens: every example's moment vector ``[f, f**2]`` is clipped to L2 norm
``calibration_clip * sqrt(F)``, the vectors are summed, Gaussian noise of standard deviation
``calibration_noise * clip`` is added to every coordinate, and the sum is divided by the
site's number of examples (public: it is the FedAvg weight). Adding or removing one example
moves the sum by at most ``clip``: sensitivity ``clip``, noise multiplier
``calibration_noise``, sample rate 1. Without DP the moments are exact; under central DP
they travel inside the clipped, noised update like any other array.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from task.runtime.device import model_device

#: Images per forward pass while computing moments.
MOMENT_BATCH = 256


class FeatureCalibrated(Protocol):
    """A network whose standardisation needs the federation's feature moments (the members
    are :data:`CALIBRATION_MEMBERS`)."""

    num_features: int

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def needs_calibration(self) -> bool: ...

    def set_moments(self, mean: torch.Tensor, second_moment: torch.Tensor) -> None: ...


#: What :class:`FeatureCalibrated` asks of a network class. Checked by name: a protocol with
#: a data member (``num_features``) cannot take ``issubclass``, and the check must also run
#: on a config's class before the network is built.
CALIBRATION_MEMBERS = ("num_features", "features", "needs_calibration", "set_moments")


def _calibrated_class(cls: type) -> bool:
    return all(hasattr(cls, name) for name in CALIBRATION_MEMBERS)


def has_calibration(model: torch.nn.Module) -> bool:
    """Whether ``model`` standardises with feature moments."""
    return _calibrated_class(type(model))


def class_has_calibration(target: str) -> bool:
    """:func:`has_calibration` for a config's ``_target_`` (before building the network)."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except (ImportError, ValueError):  # a function target (a MONAI factory): no moments
        return False
    return _calibrated_class(cls)


def site_moments(
    model: FeatureCalibrated,
    images: np.ndarray,
    *,
    clip: float | None = None,
    noise_multiplier: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and second moment of ``model.features`` over ``images``.

    Args:
        model: the network (its features are parameter-free, so the weights do not matter).
        images: the site's preprocessed training images, ``(N, C, H, W)``.
        clip: L2 bound of each example's ``[f, f**2]``, in units of ``sqrt(F)``; None:
            no clipping (exact moments, no DP).
        noise_multiplier: σ of the Gaussian noise, in units of the clipping bound.
        generator: the noise's generator (secret under DP).
    """
    if len(images) == 0:
        raise ValueError("cannot compute feature moments of a site without training images")
    if noise_multiplier and clip is None:
        raise ValueError("noisy moments need a clipping bound (the noise's sensitivity)")
    n_features = int(model.num_features)
    bound = None if clip is None else float(clip) * n_features**0.5
    total = torch.zeros(2 * n_features, dtype=torch.float64)
    device = model_device(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), MOMENT_BATCH):
            # np.require copies only a read-only (memory-mapped) chunk: torch cannot wrap it
            chunk = np.require(images[start : start + MOMENT_BATCH], requirements="W")
            x = torch.from_numpy(chunk).to(device, non_blocking=True)
            f = model.features(x).double().cpu()  # summed on the CPU, where the noise is
            v = torch.cat([f, f**2], dim=1)
            if bound is not None:
                v = v * (bound / v.norm(dim=1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)
            total += v.sum(dim=0)
    model.train(was_training)
    if noise_multiplier:
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float64)
        total += noise * float(noise_multiplier) * bound
    total /= len(images)
    return total[:n_features].float(), total[n_features:].float()
