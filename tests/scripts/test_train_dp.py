"""Differential privacy end to end: real simulations, secure aggregation on (the default).

ε is checked against Google's dp-accounting (independent of the Opacus analysis the code
uses); the budget stop, the restart of every process and central DP run for real.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from task.config import compose_config
from task.data.sites import partition_site
from task.privacy.ledger import LEDGER_FILE
from tests.scripts.test_train import QUICK, _call, _cmd, _run
from tests.task.privacy.test_accountant import _reference

pytestmark = pytest.mark.slow

SIGMA, STEPS = 1.0, 3  # fixed noise, DP-SGD steps per round


def _sample_rates() -> dict[str, float]:
    cfg = compose_config(QUICK)
    rates = {}
    for i in range(3):
        n = len(partition_site(cfg, i, 3).splits.train)
        rates[f"site-{i}"] = 1.0 / math.ceil(n / int(cfg.train.batch_size))
    return rates


def _local(*extra: str) -> list[str]:
    return [
        "logger=none",
        "privacy=local_dp",
        f"privacy.noise_multiplier={SIGMA}",
        f"federation.local_steps={STEPS}",
        *extra,
    ]


def _eps(q: float, rounds: int) -> float:
    return _reference([(SIGMA, q, STEPS * rounds)])


def test_budget_ends_the_federation_at_the_right_round(tmp_path: Path) -> None:
    rates = _sample_rates()
    # a budget that two rounds fit under at every site and a third passes at every site
    low = max(_eps(q, 2) for q in rates.values())
    high = min(_eps(q, 3) for q in rates.values())
    assert low < high
    budget = round((low + high) / 2, 4)
    run_dir = tmp_path / "budget"
    _run(_cmd(run_dir, *_local(f"privacy.epsilon={budget}", "federation.num_rounds=5")))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    assert metrics["rounds_run"] == 2 and [h["round"] for h in history] == [1, 2]
    assert "spent their privacy budget" in metrics["privacy"]["stopped_early"]
    assert metrics["test"]["auc"] > 0.5  # the final evaluation still ran
    for site, q in rates.items():
        assert metrics["privacy"]["sites"][site] == pytest.approx(_eps(q, 2), abs=1e-3)
        assert metrics["privacy"]["sites"][site] <= budget
        assert history[-1]["sites"][site]["privacy"]["rounds-left"] == 0
        assert history[0]["sites"][site]["train"] == {}  # still nothing per site in the clear
        assert history[-1]["sites"][site]["privacy"]["dp-steps"] == 2 * STEPS
    # the sites' noise-free training loss is accounted by no mechanism: not sent, not summed
    assert all("loss" not in h["train"] for h in history)


def test_epsilon_grows_per_round_and_survives_a_restart_of_every_process(
    tmp_path: Path,
) -> None:
    rates = _sample_rates()
    run_dir = tmp_path / "restart"
    _run(_cmd(run_dir, *_local("federation.num_rounds=2", "privacy.epsilon=null")))
    ledgers = {s: run_dir / "sites" / s / LEDGER_FILE for s in rates}
    assert all(p.is_file() for p in ledgers.values())
    # a new server and new sites, continuing the same federation for one more round
    resumed = ("federation.num_rounds=3", "privacy.epsilon=null", f"resume={run_dir / 'last.pt'}")
    _run(_cmd(run_dir, *_local(*resumed)))
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2, 3]
    for site, q in rates.items():
        eps = [h["privacy"]["sites"][site] for h in history]
        assert eps == pytest.approx([_eps(q, r) for r in (1, 2, 3)], abs=1e-3)
        assert eps[0] < eps[1] < eps[2]  # round 3 continued the ledger, not from zero
        assert json.loads(ledgers[site].read_text())["history"] == [[SIGMA, q, 3 * STEPS]]


def test_central_dp_with_secure_aggregation(tmp_path: Path) -> None:
    run_dir = tmp_path / "central"
    sigma = 5.0
    _run(
        _cmd(
            run_dir,
            "logger=none",
            "privacy=central_dp",
            f"privacy.noise_multiplier={sigma}",
            "privacy.epsilon=null",
            "federation.num_rounds=2",
        )
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    effective = sigma * math.sqrt(3 / 2)  # three sites' noise shares, min_sites = 2
    for r, h in enumerate(history, start=1):
        assert h["train"]["secure-sites"] == 3 and h["train"]["num-examples"] == 3
        assert h["privacy"]["epsilon"] == pytest.approx(_reference([(effective, 1.0, r)]), abs=1e-3)
        assert all(s["train"] == {} for s in h["sites"].values())
    assert metrics["privacy"]["mode"] == "central_dp"
    assert metrics["privacy"]["epsilon"] == pytest.approx(history[-1]["privacy"]["epsilon"])


def test_central_dp_without_secure_aggregation_is_refused(tmp_path: Path) -> None:
    proc = _call(
        _cmd(tmp_path / "x", "logger=none", "privacy=central_dp", "secure=none"), timeout=300
    )
    assert proc.returncode != 0
    assert "privacy=central_dp needs secure=smpc" in proc.stdout + proc.stderr


def test_an_epsilon_the_moments_release_alone_spends_is_refused_before_round_one(
    tmp_path: Path,
) -> None:
    cmd = [c for c in _cmd(tmp_path / "x", "logger=none") if not c.startswith("model")]
    cmd += ["privacy=local_dp", "privacy.epsilon=1", "privacy.calibration_noise=2"]
    proc = _call(cmd, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "the feature calibration alone (privacy.calibration_noise=2) spends" in out
    assert "[ROUND 1" not in out
