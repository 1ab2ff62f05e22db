"""ScatterNet features with a linear head: the network for DP-SGD (``model=dp_scatternet``).

Why: DP-SGD adds noise to every trained weight, so a network that must *learn* its features
from a site's images under ε = 3 loses most of its signal (docs/results-history.md). A
wavelet scattering transform (Mallat, 2012; Bruna and Mallat, 2013) gives fixed,
translation- and deformation-stable features with no parameters to train, and DP-SGD only
has to learn a linear classifier on them: Tramer and Boneh ("Differentially Private Learning
Needs Better Features (or Much More Data)", ICLR 2021) found ScatterNet + linear
beats end-to-end CNNs at every ε they tried on small data.

The transform is Kymatio's (``Scattering2D``, J = 2, L = 8: 81 channels per input channel at
a quarter of the resolution), applied to each image standardised on its own. Its features
are normalised per example (GroupNorm without affine weights), then standardised per
feature with the federation's own first and second moments (Tramer and Boneh's "data
normalisation"), then classified by one linear layer.
Per-feature standardisation is what a linear model under DP-SGD needs most: on
PneumoniaMNIST at ε = 3 (Flower-free probes, 3 seeds) it lifted test AUC from about 0.945
to 0.96. The moments are buffers, calibrated once by the sites in round 1
(:mod:`task.federation.calibration`; under local DP a Gaussian mechanism on clipped per-example
moments, accounted in the site's ledger), then averaged with the model like any weight, so
under secure aggregation the server sees only their sum. Until calibrated (mean 0, second
moment 1) the standardisation is the identity.

The filter bank is public and fixed: it is kept out of the state dict, so that it is
neither sent to the server nor secret-shared and averaged every round.

Kymatio is imported from its 2-D torch frontend: ``kymatio.torch`` also imports the 3-D
frontend, which needs ``scipy.special.sph_harm`` (removed in SciPy 1.17).
"""

from __future__ import annotations

import torch
from torch import nn

#: Kymatio's defaults for images as small as 28 px (a 4 px-scale smallest window).
SCATTER_J = 2
SCATTER_ORIENTATIONS = 8
#: Added to each image's standard deviation before dividing by it (a flat image maps to 0).
INPUT_STD_EPS = 1e-6
#: Floor of a feature's variance in the standardisation (the per-example GroupNorm gives
#: features of about unit variance; a noisy estimate must not blow one up).
VARIANCE_FLOOR = 0.05


def scatter_channels(j: int, orientations: int) -> int:
    """Channels per input channel of a second-order scattering transform."""
    return 1 + j * orientations + orientations**2 * j * (j - 1) // 2


class Scattering(nn.Module):
    """Kymatio's 2-D scattering transform, channels folded: ``(B, C, H, W)`` to
    ``(B, C * K, H / 2**J, W / 2**J)``. Parameter-free; the filters are non-persistent
    buffers (they follow ``.to()`` but are not in ``state_dict()``)."""

    def __init__(
        self, shape: tuple[int, int], j: int = SCATTER_J, orientations: int = SCATTER_ORIENTATIONS
    ):
        super().__init__()
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

        if min(shape) < 2 ** (j + 1):
            raise ValueError(
                f"scattering with J={j} needs images of at least {2 ** (j + 1)} px, got {shape}"
            )
        self.transform = ScatteringTorch2D(J=j, shape=tuple(shape), L=orientations)
        for name, buffer in list(self.transform.named_buffers(recurse=False)):
            self.transform.register_buffer(name, buffer, persistent=False)
        self.j = j
        self.channels = scatter_channels(j, orientations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Kymatio's filters are float32; autocast (bf16 training) must not reach the FFTs.
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self.transform(x.float())
        b, c, k, h, w = out.shape
        return out.reshape(b, c * k, h, w)


def standardise_images(x: torch.Tensor) -> torch.Tensor:
    """Each image and channel to zero mean and unit standard deviation.

    Why: the scattering transform is positively homogeneous and its wavelets have zero
    mean, so after the per-example GroupNorm only the order-0 (low-pass) channels still
    depend on an image's intensity offset, which differs with acquisition: PneumoniaMNIST's
    test split was processed differently from its training split. Taking the offset out of
    every image first costs nothing in privacy (it uses no other example) and raised test
    AUC under DP-SGD at ε = 3 by 0.003-0.004 in each of 4 noise seeds (a standalone Opacus
    loop; docs/results-history.md).
    """
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True)
    return (x - mean) / (std + INPUT_STD_EPS)


class ScatterNetLinear(nn.Module):
    """Scattering features, per-example GroupNorm, per-feature standardisation, linear.

    Args:
        in_shape: ``(channels, height, width)`` of the input images.
        classes: number of outputs.
        groups: GroupNorm groups over the scattering channels (Tramer and Boneh use 27
            for 81 channels per input channel); must divide them.
        j: scattering scale (the features are ``2**j`` times smaller per side).
        orientations: wavelet orientations (Kymatio's ``L``).
        standardise_input: standardise each image first (:func:`standardise_images`);
            False scatters the images as the transforms left them.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        classes: int,
        groups: int = 27,
        j: int = SCATTER_J,
        orientations: int = SCATTER_ORIENTATIONS,
        standardise_input: bool = True,
    ):
        super().__init__()
        c, h, w = (int(v) for v in in_shape)
        if not isinstance(standardise_input, bool):
            raise ValueError(
                f"ScatterNetLinear: standardise_input={standardise_input!r} must be true or false"
            )
        self.standardise_input = standardise_input
        self.scattering = Scattering((h, w), j, orientations)
        channels = c * self.scattering.channels
        if channels % groups:
            raise ValueError(
                f"ScatterNetLinear: groups={groups} must divide the {channels} scattering "
                f"channels (J={j}, L={orientations}, {c} input channel(s))"
            )
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        with torch.no_grad():
            features = self.scattering(torch.zeros(1, c, h, w)).numel()
        self.head = nn.Linear(features, classes)
        # The federation's feature moments (see the module docstring); 0 / 1: identity.
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_second_moment", torch.ones(features))
        self.register_buffer("calibrated", torch.zeros(1))

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` per-example-normalised scattering features, before standardisation.

        Each row has squared norm ``F`` (GroupNorm: zero mean, unit variance per group),
        up to GroupNorm's epsilon: the bound :mod:`task.federation.calibration` clips against."""
        if self.standardise_input:
            x = standardise_images(x)
        return torch.flatten(self.norm(self.scattering(x)), 1)

    def needs_calibration(self) -> bool:
        """True until the moments are set (after averaging, ``calibrated`` is about 1)."""
        return bool(self.calibrated.item() < 0.5)

    @torch.no_grad()
    def set_moments(self, mean: torch.Tensor, second_moment: torch.Tensor) -> None:
        """Standardise with these per-feature moments from now on."""
        if mean.shape != self.feature_mean.shape or second_moment.shape != mean.shape:
            raise ValueError(
                f"moments of shapes {tuple(mean.shape)} / {tuple(second_moment.shape)} for "
                f"{self.num_features} features"
            )
        self.feature_mean.copy_(mean)
        self.feature_second_moment.copy_(second_moment)
        self.calibrated.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = self.feature_second_moment - self.feature_mean**2
        std = variance.clamp(min=VARIANCE_FLOOR).sqrt()
        return self.head((self.features(x) - self.feature_mean) / std)
