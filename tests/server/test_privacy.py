"""The coordinator's privacy bookkeeping: recorded ε, when to stop, checkpointed state."""

from __future__ import annotations

import pytest

from server.privacy import federation_privacy
from strategies.round_record import RoundRecord
from task.config import compose_config
from task.privacy import Accountant, CentralDP, LocalDP, NoPrivacy
from task.privacy.settings import BUDGET_DECLINE
from tests.task.privacy.test_accountant import _reference

CFG = compose_config(["federation.num_sites=3", "federation.min_train_sites=2"])


def _site_round(r: int, left: dict[str, int]) -> RoundRecord:
    record = RoundRecord(round=r)
    for site, rounds_left in left.items():
        record.sites[site] = {
            "train": {},
            "privacy": {"epsilon": 0.5 * r, "noise-multiplier": 1.1, "rounds-left": rounds_left},
        }
    return record


def test_local_dp_stops_when_too_few_sites_can_train() -> None:
    fp = federation_privacy(LocalDP(epsilon=3.0), CFG, None)
    entry = fp.after_round(_site_round(1, {"a": 2, "b": 0, "c": 2}))
    assert entry == {"sites": {"a": 0.5, "b": 0.5, "c": 0.5}}
    assert fp.should_stop(2) is None  # a and c can still train: 2 >= min_train_sites
    fp.after_round(_site_round(2, {"a": 0, "c": 1}))  # b refused (no report); a is spent
    reason = fp.should_stop(3)
    assert reason is not None and "reported spent: ['a', 'b']" in reason
    restored = federation_privacy(LocalDP(epsilon=3.0), CFG, fp.state())
    assert restored.should_stop(3) == reason
    summary = restored.summary(reason)
    assert summary["sites"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert summary["stopped_early"] == reason


def test_sites_that_refuse_from_the_start_end_the_federation() -> None:
    """Sites whose budget cannot pay for one round never report; their declines count, by
    the reply's reason code (a failure's error text, whatever it says, does not)."""
    fp = federation_privacy(LocalDP(epsilon=0.5), CFG, None)
    record = RoundRecord(round=1)
    record.declined = {"s": BUDGET_DECLINE, "t": BUDGET_DECLINE, "u": "another-reason"}
    record.train_errors = ["ClientAppException: site v: privacy budget exhausted: ..."]
    fp.after_round(record)
    reason = fp.should_stop(2)
    assert reason is not None and "refused the last round: 2" in reason


def test_central_dp_accounts_each_revealed_sum_and_stops_at_the_budget() -> None:
    dp = CentralDP(epsilon=2.0, noise_multiplier=5.0, min_sites=2)
    fp = federation_privacy(dp, CFG, None)
    rounds = 0
    while fp.should_stop(rounds + 1) is None:
        record = RoundRecord(round=rounds + 1, train={"secure-sites": 2})
        entry = fp.after_round(record)
        rounds += 1
        assert entry["epsilon"] == pytest.approx(_reference([(5.0, 1.0, rounds)]), abs=1e-3)
    assert rounds >= 2
    # independently: the budget allows exactly this many rounds of σ = 5 on the sum
    assert _reference([(5.0, 1.0, rounds)]) <= 2.0 < _reference([(5.0, 1.0, rounds + 1)])
    abandoned = fp.after_round(RoundRecord(round=rounds + 1, train={}))  # nothing revealed
    assert abandoned["rounds"] == rounds
    # a sum of all three sites carries more noise than the two-site minimum
    more = federation_privacy(dp, CFG, None)
    more.after_round(RoundRecord(round=1, train={"secure-sites": 3}))
    assert more.accountant.history == Accountant([(5.0 * 1.5**0.5, 1.0, 1)]).history
    assert federation_privacy(dp, CFG, fp.state()).epsilon == fp.epsilon


def test_no_privacy_records_nothing_and_bad_min_sites_is_refused() -> None:
    fp = federation_privacy(NoPrivacy(), CFG, None)
    assert not fp.enabled and fp.after_round(_site_round(1, {"a": 0})) == {}
    assert fp.should_stop(2) is None
    with pytest.raises(ValueError, match=r"min_sites=4 exceeds federation\.num_sites=3"):
        federation_privacy(CentralDP(min_sites=4), CFG, None)


def test_local_dp_refuses_secure_normalisation() -> None:
    """Intensity moments sent without DP are outside local DP's guarantee."""
    cfg = compose_config(["privacy=local_dp", "federation.secure_normalisation=true"])
    with pytest.raises(ValueError, match="intensity moments without DP"):
        federation_privacy(LocalDP(epsilon=3.0), cfg, None)
    federation_privacy(NoPrivacy(), compose_config(["federation.secure_normalisation=true"]), None)
