"""The seed-spread benchmark's arithmetic: the spread of a metric and the rounds that the
validation-only rules pick (the full benchmark runs 15 federations: scripts/, not tests)."""

from __future__ import annotations

import math

import pytest

from scripts.seed_spread import _targets, spread, validation_picks


def _history(mcc: list[float], loss: list[float]) -> list[dict]:
    return [
        {"round": r + 1, "evaluate": {"mcc": m, "loss": x, "num-examples": 400}}
        for r, (m, x) in enumerate(zip(mcc, loss, strict=True))
    ]


def test_each_validation_rule_picks_its_own_round() -> None:
    # An early MCC spike (round 2), the lowest loss at round 5, a late plateau (rounds 6-10).
    mcc = [0.80, 0.95, 0.85, 0.86, 0.87, 0.90, 0.91, 0.91, 0.92, 0.91]
    loss = [0.5, 0.4, 0.35, 0.3, 0.2, 0.25, 0.24, 0.23, 0.22, 0.21]
    v = validation_picks(_history(mcc, loss))
    assert v["picks"] == {
        "val_mcc": 2,
        "val_loss": 5,
        "smoothed_val_mcc": 10,  # the best 5-round mean ends at the last round
        "val_mcc_second_half": 9,
        "last": 10,
    }
    se = (1 - 0.91**2) / math.sqrt(400)
    assert v["val_mcc_standard_error"] == pytest.approx(se)
    assert v["best_above_last_in_standard_errors"] == pytest.approx((0.95 - 0.91) / se)


def test_the_targets_need_the_mean_and_every_seed() -> None:
    assert spread([0.96, 0.98])["sd"] == pytest.approx(math.sqrt(2) * 0.01)
    rows = [{"last": {"auc": a}} for a in (0.99, 0.99, 0.96)]  # mean 0.98, one seed low
    assert _targets(rows, "last") == {
        "mean_auc": pytest.approx(0.98),
        "min_auc": 0.96,
        "met": False,
    }
    rows = [{"last": {"auc": a}} for a in (0.97, 0.97, 0.966)]
    assert _targets(rows, "last")["met"] is False  # every seed >= 0.965 but mean < 0.97
