"""A site's ledger: the round plan, the enforced budget, the report, restarts."""

from __future__ import annotations

import pytest

from task.privacy import Accountant, BudgetExhausted, LocalDP
from task.privacy.ledger import LEDGER_FILE, SiteLedger, plan_round
from tests.task.privacy.test_accountant import _reference


def test_plan_counts_batches_and_calibrates_for_all_planned_rounds() -> None:
    dp = LocalDP(epsilon=3.0)
    plan = plan_round(
        dp, n_train=1000, batch_size=64, local_steps=None, local_epochs=2, num_rounds=5
    )
    assert plan.steps == 2 * 16 and plan.sample_rate == 1 / 16
    spent = Accountant([(plan.noise_multiplier, plan.sample_rate, plan.steps * 5)])
    assert 2.97 <= spent.epsilon(dp.delta) <= 3.0
    steps_plan = plan_round(
        dp, n_train=1000, batch_size=64, local_steps=5, local_epochs=2, num_rounds=5
    )
    assert steps_plan.steps == 5


def test_budget_refuses_the_first_round_past_it_and_survives_restart(tmp_path) -> None:
    dp = LocalDP(epsilon=2.0, noise_multiplier=2.0)
    plan = plan_round(
        dp, n_train=640, batch_size=64, local_steps=None, local_epochs=1, num_rounds=50
    )
    # independently: the last round count whose ε (dp-accounting) stays within 2.0
    expected = max(k for k in range(50) if k == 0 or _reference([(2.0, 0.1, 10 * k)]) <= 2.0)
    assert 1 < expected < 50
    trained = 0
    while True:
        ledger = SiteLedger(dp, tmp_path, "site-a")  # a new process every round
        try:
            ledger.check(plan)
        except BudgetExhausted as err:
            assert "site site-a: privacy budget exhausted" in str(err)
            assert f"> budget {dp.epsilon}" in str(err)
            break
        ledger.accountant.step(plan.noise_multiplier, plan.sample_rate, plan.steps)
        ledger.save()
        trained += 1
        report = ledger.report(plan)
        assert report["rounds-left"] == expected - trained
        assert report["epsilon"] <= dp.epsilon
    assert trained == expected
    assert (tmp_path / LEDGER_FILE).is_file()


def test_reported_fields() -> None:
    dp = LocalDP(epsilon=None, noise_multiplier=1.1)
    ledger = SiteLedger(dp, "/nonexistent-dir-for-reading-only", "s")
    plan = plan_round(
        dp, n_train=100, batch_size=10, local_steps=None, local_epochs=1, num_rounds=4
    )
    ledger.check(plan)  # no budget: never refuses
    report = ledger.report(plan)
    assert report == {
        "epsilon": 0.0,
        "delta": dp.delta,
        "noise-multiplier": 1.1,
        "sample-rate": 0.1,
        "dp-steps": 0,
        "dp-releases": 0,
        "rounds-left": 4,
    }


def test_a_release_is_accounted_but_not_counted_as_a_dp_sgd_step(tmp_path) -> None:
    dp = LocalDP(epsilon=3.0)
    plan = plan_round(
        dp,
        n_train=1750,
        batch_size=256,
        local_steps=None,
        local_epochs=1,
        num_rounds=36,
        calibration=True,
    )
    assert plan.steps == 7
    release = dp.calibration_history()[0]
    for _ in range(3):  # a new process every round, as a restarted site
        ledger = SiteLedger(dp, tmp_path, "site-a")
        if ledger.accountant.steps == 0:
            ledger.accountant.release(*release)
        ledger.check(plan)
        ledger.accountant.step(plan.noise_multiplier, plan.sample_rate, plan.steps)
        ledger.save()
        report = ledger.report(plan)
        assert (report["dp-steps"], report["dp-releases"]) == (ledger.accountant.steps - 1, 1)
    assert report["dp-steps"] == 21  # 7, 14, 21: the release is not a step
    assert report["epsilon"] == pytest.approx(
        _reference([release, (plan.noise_multiplier, plan.sample_rate, 21)]), abs=1e-3
    )


def test_plan_needs_examples() -> None:
    with pytest.raises(ValueError, match="without training examples"):
        plan_round(
            LocalDP(), n_train=0, batch_size=8, local_steps=None, local_epochs=1, num_rounds=1
        )
