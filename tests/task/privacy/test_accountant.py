"""The persisted accountant: against dp-accounting, monotone, saved and restored."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from task.privacy import Accountant
from task.privacy.settings import calibrate

DELTA = 1e-5


def _reference(history: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    """Google's dp-accounting, an implementation independent of Opacus, same RDP orders."""
    acc = rdp_privacy_accountant.RdpAccountant(orders=Accountant().opacus.DEFAULT_ALPHAS)
    for sigma, q, steps in history:
        event = dp_accounting.GaussianDpEvent(sigma)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    "history",
    [
        [(1.0, 0.01, 1000)],  # a long DP-SGD run
        [(1.5, 0.04, 300)],  # the scale of local DP here: 12 rounds of 25 steps
        [(5.0, 1.0, 12)],  # central DP: one Gaussian mechanism a round, no sampling
        [(1.1, 1.0, 3)],
        [(1.2, 0.05, 100), (2.0, 0.05, 50), (1.2, 0.1, 20)],  # sites changing σ or q
    ],
)
def test_epsilon_agrees_with_dp_accounting(history) -> None:
    assert Accountant(history).epsilon(DELTA) == pytest.approx(_reference(history), abs=1e-4)


# What a site of the default local-DP recipe spends over its 36 rounds (1569 training
# images, batch 256: q = 1/7, 7 DP-SGD steps a round; σ as calibrated for ε = 1, 3, 8):
# the feature moments' release then DP-SGD, and DP-SGD alone (scripts/check_accounting.py).
# Tolerance: dp-accounting minus ours. At ε = 8 dp-accounting's RDP at fractional orders
# lies above the exact value, which ours equals (tests/scripts/test_check_accounting.py).
RECIPE = [
    ([(5.5078125, 1.0, 1), (13.75, 1 / 7, 252)], 1e-6),  # ε = 1
    ([(9.375, 1 / 7, 252)], 1e-6),
    ([(2.01171875, 1.0, 1), (5.1953125, 1 / 7, 252)], 1e-6),  # ε = 3
    ([(3.5546875, 1 / 7, 252)], 1e-6),
    ([(0.843505859375, 1.0, 1), (2.3681640625, 1 / 7, 252)], 2.5e-3),  # ε = 8
    ([(1.668701171875, 1 / 7, 252)], 1.2e-2),
]


@pytest.mark.parametrize(("history", "tolerance"), RECIPE)
def test_epsilon_of_the_recipe_agrees_with_dp_accounting_from_below(history, tolerance) -> None:
    ours, reference = Accountant(history).epsilon(DELTA), _reference(history)
    assert -1e-9 <= reference - ours <= tolerance


def test_epsilon_only_grows_and_step_merges_equal_mechanisms() -> None:
    acc, last = Accountant(), 0.0
    for _ in range(6):
        acc.step(1.3, 0.05, 25)
        eps = acc.epsilon(DELTA)
        assert eps > last
        last = eps
    assert acc.history == [(1.3, 0.05, 150)] and acc.steps == 150
    assert acc.epsilon_after(DELTA, 1.3, 0.05, 25) > last
    assert acc.history == [(1.3, 0.05, 150)]  # a trial leaves the ledger unchanged


def test_rounds_within_budget_is_the_last_round_under_it() -> None:
    acc = Accountant([(1.3, 0.05, 50)])
    k = acc.rounds_within(3.0, DELTA, 1.3, 0.05, 25, limit=50)
    assert 0 < k < 50
    assert _reference([(1.3, 0.05, 50 + 25 * k)]) <= 3.0 < _reference([(1.3, 0.05, 75 + 25 * k)])


def test_calibrated_noise_spends_the_target_within_tolerance() -> None:
    sigma = calibrate(3.0, DELTA, 0.04, 300)
    eps = _reference([(sigma, 0.04, 300)])
    assert 2.98 <= eps <= 3.0


def test_saved_ledger_survives_a_restart(tmp_path) -> None:
    path = tmp_path / "site" / "ledger.json"
    acc = Accountant.load(path)  # no file yet: a fresh ledger
    assert acc.epsilon(DELTA) == 0.0
    acc.step(1.3, 0.05, 25)
    acc.save(path)
    again = Accountant.load(path)
    assert again.history == acc.history
    assert again.epsilon(DELTA) == acc.epsilon(DELTA)
    assert not list(path.parent.glob(".*.tmp"))


def test_releases_are_composed_but_counted_apart_and_survive_a_restart(tmp_path) -> None:
    acc = Accountant()
    acc.release(2.0, 1.0)
    acc.step(2.0, 1.0, 3)  # an equal mechanism merges in the history; the count stays apart
    acc.step(1.3, 0.05, 25)
    assert acc.history == [(2.0, 1.0, 4), (1.3, 0.05, 25)]
    assert (acc.steps, acc.releases, acc.iterated_steps) == (29, 1, 28)
    assert acc.epsilon(DELTA) == pytest.approx(_reference(acc.history), abs=1e-3)
    path = tmp_path / "ledger.json"
    acc.save(path)
    again = Accountant.load(path)
    assert (again.history, again.releases) == (acc.history, 1)
    # a ledger written before releases were counted apart: its steps are all iterated
    path.write_text('{"version": 1, "mechanism": "rdp", "history": [[1.3, 0.05, 25]]}')
    assert Accountant.load(path).iterated_steps == 25
    path.write_text(
        '{"version": 1, "mechanism": "rdp", "history": [[1.3, 0.05, 2]], "releases": 3}'
    )
    with pytest.raises(ValueError, match=r"unreadable \(releases=3 must be an integer in \[0, 2\]"):
        Accountant.load(path)


def test_unreadable_ledger_is_refused_not_reset(tmp_path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text('{"version": 1, "mechanism": "rdp", "history": [[1.0, 0.1')
    with pytest.raises(ValueError, match=r"ledger\.json is unreadable.*ε from zero"):
        Accountant.load(path)
    path.write_text('{"version": 99, "mechanism": "rdp", "history": []}')
    with pytest.raises(ValueError, match="version 99"):
        Accountant.load(path)


@pytest.mark.parametrize("bad", [(0.0, 0.1, 1), (1.0, 0.0, 1), (1.0, 1.5, 1), (1.0, 0.1, -1)])
def test_impossible_mechanisms_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="cannot account"):
        Accountant().step(*bad)


def test_calibration_after_a_prior_release_spends_the_target_in_total() -> None:
    # The feature moments' one Gaussian release (task.federation.calibration) comes first;
    # DP-SGD's σ then leaves room for it, and the two together spend the target per dp-accounting.
    prior = ((2.0, 1.0, 1),)
    q, steps = 1 / 6, 6 * 36
    sigma = calibrate(3.0, DELTA, q, steps, prior)
    assert 2.98 <= _reference([*prior, (sigma, q, steps)]) <= 3.0
    assert sigma > calibrate(3.0, DELTA, q, steps)
    with pytest.raises(ValueError, match="feature calibration alone spends"):
        calibrate(1.0, DELTA, q, steps, prior)
