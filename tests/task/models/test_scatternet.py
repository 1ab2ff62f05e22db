"""The DP network: scattering features, standardisation by the federation's moments."""

from __future__ import annotations

import pytest
import torch

from task.config import compose_config
from task.federation.calibration import class_has_calibration, has_calibration
from task.models.factory import build_model
from task.models.scatternet import ScatterNetLinear, scatter_channels, standardise_images
from task.privacy.dpsgd import check_per_example_gradients


def test_the_filter_bank_stays_out_of_the_state_dict() -> None:
    model = ScatterNetLinear((1, 28, 28), 2)
    # Only what is trained or calibrated travels to the server; the public filters do not.
    assert set(model.state_dict()) == {
        "head.weight",
        "head.bias",
        "feature_mean",
        "feature_second_moment",
        "calibrated",
    }
    assert model.num_features == scatter_channels(2, 8) * 7 * 7 == 81 * 49
    assert sum(p.numel() for p in model.parameters()) == 2 * 81 * 49 + 2


def test_standardisation_is_the_identity_until_calibrated_then_uses_the_moments() -> None:
    torch.manual_seed(0)
    model = ScatterNetLinear((1, 28, 28), 2).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        raw = model.head(model.features(x))
        assert torch.allclose(model(x), raw, atol=1e-5)
        assert model.needs_calibration()
        mean = torch.full((model.num_features,), 0.5)
        model.set_moments(mean, mean**2 + 4.0)  # variance 4: std 2
        assert not model.needs_calibration()
        expected = model.head((model.features(x) - 0.5) / 2.0)
        assert torch.allclose(model(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        model.set_moments(torch.zeros(3), torch.ones(3))


def test_features_ignore_each_images_intensity_offset_and_scale() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    # Another acquisition of the same anatomy: brighter by a per-image offset, other gain.
    shifted = 2.5 * x + torch.tensor([0.3, -1.0, 4.0]).view(3, 1, 1, 1)
    model = ScatterNetLinear((1, 28, 28), 2)
    with torch.no_grad():
        assert torch.allclose(model.features(shifted), model.features(x), atol=1e-3)
        raw = ScatterNetLinear((1, 28, 28), 2, standardise_input=False)
        # Without the standardisation the low-pass (order-0) features follow the offset.
        assert (raw.features(shifted) - raw.features(x)).abs().max() > 0.1
    z = standardise_images(shifted)
    assert torch.allclose(z.mean(dim=(-2, -1)), torch.zeros(3, 1), atol=1e-5)
    assert torch.allclose(z.std(dim=(-2, -1)), torch.ones(3, 1), atol=1e-4)
    assert torch.equal(standardise_images(torch.full((1, 1, 8, 8), 7.0)), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="standardise_input='yes' must be true or false"):
        ScatterNetLinear((1, 28, 28), 2, standardise_input="yes")


def test_groupnorm_groups_must_divide_the_channels_and_small_images_are_refused() -> None:
    with pytest.raises(ValueError, match="groups=10 must divide the 81"):
        ScatterNetLinear((1, 28, 28), 2, groups=10)
    with pytest.raises(ValueError, match="at least 8 px"):
        ScatterNetLinear((1, 6, 6), 2)


def test_the_local_dp_default_builds_and_opacus_can_train_it() -> None:
    cfg = compose_config(["privacy=local_dp"])
    assert cfg.model._target_ == "task.models.scatternet.ScatterNetLinear"
    assert class_has_calibration(cfg.model._target_)
    assert not class_has_calibration("monai.networks.nets.Classifier")
    model = build_model(cfg.model, (1, 28, 28), 2, dp_compatible=True)
    assert has_calibration(model)
    check_per_example_gradients(model, (1, 28, 28))
