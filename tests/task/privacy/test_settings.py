"""The privacy group's options: checked arguments, calibrated and effective noise."""

from __future__ import annotations

import math

import pytest

from task.config import compose_config
from task.privacy import Accountant, CentralDP, LocalDP, NoPrivacy, privacy_of


@pytest.mark.parametrize(
    ("option", "cls"), [("none", NoPrivacy), ("local_dp", LocalDP), ("central_dp", CentralDP)]
)
def test_every_option_composes_and_builds(option, cls) -> None:
    assert isinstance(privacy_of(compose_config([f"privacy={option}"])), cls)


def test_central_min_sites_follows_the_federation() -> None:
    cfg = compose_config(["privacy=central_dp", "federation.min_train_sites=3"])
    assert privacy_of(cfg).min_sites == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": None, "noise_multiplier": None}, "set epsilon"),
        ({"epsilon": -1.0}, "epsilon=-1.0"),
        ({"epsilon": math.inf}, "epsilon=inf"),
        ({"delta": 0.0}, "delta=0.0"),
        ({"noise_multiplier": 0.0}, "noise_multiplier=0.0"),
        ({"max_grad_norm": 0.0}, "max_grad_norm=0.0"),
        ({"calibration_noise": 0.0}, "calibration_noise=0.0"),
        ({"calibration_share": 1.0}, "calibration_share=1.0"),
        ({"calibration_clip": -2.0}, "calibration_clip=-2.0"),
    ],
)
def test_bad_local_settings_name_the_value(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        LocalDP(**kwargs)


def test_bad_central_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="clip_norm=-1"):
        CentralDP(clip_norm=-1)
    with pytest.raises(ValueError, match="min_sites=0"):
        CentralDP(min_sites=0)


def test_given_noise_multiplier_wins_over_calibration() -> None:
    assert LocalDP(epsilon=3.0, noise_multiplier=0.7).noise_for(0.05, 300) == 0.7
    calibrated = LocalDP(epsilon=3.0).noise_for(0.05, 300)
    assert Accountant([(calibrated, 0.05, 300)]).epsilon(1e-5) <= 3.0


def test_central_noise_shares_add_up_to_the_calibrated_noise() -> None:
    dp = CentralDP(epsilon=3.0, clip_norm=0.5, min_sites=2)
    sigma = dp.noise_for(10)
    # two sites' shares: variance 2 * (σ C / sqrt 2)^2 = (σ C)^2
    assert math.sqrt(2) * dp.site_noise_std(10) == pytest.approx(sigma * 0.5)
    assert dp.effective_noise(10, 3) == pytest.approx(sigma * math.sqrt(1.5))
    with pytest.raises(ValueError, match="below min_sites=2"):
        dp.effective_noise(10, 1)


def test_unreachable_target_names_the_setting() -> None:
    # sample rate 1 keeps Opacus's RDP search in closed form (fast): no σ up to its limit
    # of 1e6 brings one full-batch step under ε = 1e-7
    with pytest.raises(ValueError, match=r"privacy\.epsilon=1e-07 cannot be reached"):
        LocalDP(epsilon=1e-7).noise_for(1.0, 1)


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_the_moments_release_spends_its_share_of_the_target_alone(epsilon) -> None:
    dp = LocalDP(epsilon=epsilon)
    alone = Accountant(list(dp.calibration_history())).epsilon(dp.delta)
    assert dp.calibration_share * epsilon - 0.02 <= alone <= dp.calibration_share * epsilon
    # a smaller target, more noise on the moments: the release never takes the whole budget
    assert dp.calibration_sigma() > LocalDP(epsilon=2 * epsilon).calibration_sigma()


def test_a_given_moments_noise_wins_and_one_that_spends_the_target_is_refused() -> None:
    assert LocalDP(epsilon=3.0, calibration_noise=4.0).calibration_history() == ((4.0, 1.0, 1),)
    with pytest.raises(ValueError, match=r"calibration alone \(privacy.calibration_noise=2\)"):
        LocalDP(epsilon=1.0, calibration_noise=2.0).calibration_history()
    with pytest.raises(ValueError, match=r"calibration_noise is needed when privacy\.epsilon"):
        LocalDP(epsilon=None, noise_multiplier=1.0).calibration_history()
