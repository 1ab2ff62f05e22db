"""scripts.check_accounting: the exact RDP it checks against, and its JSON."""

from __future__ import annotations

import json
import sys

import pytest
from opacus.accountants.analysis.rdp import compute_rdp

from scripts.check_accounting import exact_rdp, main


@pytest.mark.parametrize(
    ("sigma", "q", "order"),
    [(1.668701171875, 1 / 7, 3.6), (2.3681640625, 1 / 7, 3.8), (5.1953125, 1 / 7, 7.5)],
)
def test_our_rdp_is_the_exact_rdp_at_fractional_orders(sigma, q, order) -> None:
    ours = compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[order])[0]
    assert ours == pytest.approx(exact_rdp(sigma, q, order), rel=1e-9)


def test_integer_orders_match_the_closed_form_without_sampling() -> None:
    assert exact_rdp(2.0, 1.0, 5.0) == pytest.approx(5.0 / (2 * 2.0**2), rel=1e-9)


def test_writes_the_comparison_for_each_history(tmp_path) -> None:
    main(["--out", str(tmp_path), "--epsilons", "3", "--n-train", "1569"])
    result = json.loads((tmp_path / "check_accounting.json").read_text())
    assert [r["history"] for r in result["table"]] == ["release + DP-SGD", "DP-SGD"]
    with_release, plain = result["rows"]
    assert with_release["release"][1:] == [1.0, 1] and plain["release"] is None
    for row in result["rows"]:
        assert row["dp_sgd"]["steps_per_round"] == 7 and len(row["rounds"]) == 36
        assert abs(row["difference"]["opacus_orders"]["largest"]) < 1e-5
        assert row["epsilon"]["ours"] <= 3.0
    assert "machine" in result and result["versions"]["dp-accounting"]


def test_without_dp_accounting_it_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with pytest.raises(SystemExit, match="pip install dp-accounting"):
        main(["--out", str(tmp_path)])
