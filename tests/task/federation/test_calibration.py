"""A site's feature moments: exact without DP, clipped and noised with the stated scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from task.federation.calibration import site_moments
from task.models.scatternet import ScatterNetLinear


@pytest.fixture(scope="module")
def model():
    return ScatterNetLinear((1, 28, 28), 2)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(300, 1, 28, 28)).astype(np.float32)


def test_exact_moments_are_the_features_mean_and_mean_square(model, images) -> None:
    mean, second = site_moments(model, images)
    with torch.no_grad():
        f = model.features(torch.from_numpy(images)).double()
    assert torch.allclose(mean.double(), f.mean(0), atol=1e-5)
    assert torch.allclose(second.double(), (f**2).mean(0), atol=1e-4)


def test_clipping_bounds_one_examples_influence(model, images) -> None:
    # Sensitivity: adding one example changes the clipped sum by at most clip * sqrt(F).
    clip = 0.5  # below the norm of every example's [f, f**2]: all are clipped
    m1, s1 = site_moments(model, images, clip=clip)
    m2, s2 = site_moments(model, images[:-1], clip=clip)
    diff = torch.cat(
        [m1 * len(images) - m2 * (len(images) - 1), s1 * len(images) - s2 * (len(images) - 1)]
    ).double()
    assert diff.norm().item() == pytest.approx(clip * model.num_features**0.5, rel=1e-3)


def test_noise_has_the_stated_scale_and_comes_from_the_generator(model, images) -> None:
    clip, sigma = 2.0, 3.0
    exact_mean, exact_second = site_moments(model, images, clip=clip)
    draws = [
        site_moments(
            model,
            images,
            clip=clip,
            noise_multiplier=sigma,
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in (1, 2)
    ]
    deviation = torch.cat([draws[0][0] - exact_mean, draws[0][1] - exact_second])
    expected = sigma * clip * model.num_features**0.5 / len(images)
    assert deviation.std().item() == pytest.approx(expected, rel=0.05)
    assert not torch.equal(draws[0][0], draws[1][0])
    with pytest.raises(ValueError, match="clipping bound"):
        site_moments(model, images, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="without training images"):
        site_moments(model, images[:0])
