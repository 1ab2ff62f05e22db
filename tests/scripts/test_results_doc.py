"""docs/results.md is written from benchmark JSON, section by section."""

from __future__ import annotations

import pytest

from scripts.results_doc import render, seed_spread
from scripts.seed_spread import _targets, summarise


def _run(seed: int, auc_best: float, auc_last: float) -> dict:
    test = {"accuracy": 0.9, "mcc": 0.8}
    picks = {"val_loss": 36, "smoothed_val_mcc": 30}
    return {
        "seed": seed,
        "best_round": 5,
        "val_mcc": {"auc": auc_best, **test},
        "last": {"auc": auc_last, **test},
        "validation": {"picks": picks, "best_above_last_in_standard_errors": 1.5},
    }


def _result() -> dict:
    rows = [_run(0, 0.972, 0.973), _run(1, 0.951, 0.971)]
    part = {
        "runs": rows,
        "val_mcc": summarise(rows, "val_mcc"),
        "last": summarise(rows, "last"),
        "targets": {rule: _targets(rows, rule) for rule in ("val_mcc", "last")},
    }
    central = [{"seed": s, "test": {"auc": 0.97, "accuracy": 0.9, "mcc": 0.8}} for s in (0, 1)]
    return {
        "seeds": [0, 1],
        "wall_seconds": 600,
        "machine": {"cores": 2, "cpu": "test"},
        "partitions": {"iid": part},
        "central": {"runs": central, "test": summarise(central, "test")},
    }


def test_the_seed_spread_reports_mean_sd_and_the_lowest_seed_against_the_target() -> None:
    text = seed_spread(_result())
    # last: mean 0.972, sd 0.0014, min 0.971 -> met; val_mcc: min 0.951 -> missed
    assert "| federated, iid | last | 0.972 ± 0.001 (0.971) |" in text
    assert "| federated, iid | val_mcc | 0.962 ± 0.015 (0.951) |" in text
    assert text.count("| met |") == 1 and text.count("| missed |") == 1
    assert "| iid | 1 | 0.9510 (5) | 0.9710 | 36 | 30 | 1.50 |" in text


def test_a_section_is_replaced_between_its_markers_only() -> None:
    doc = "intro\n<!-- BEGIN a -->\nold\n<!-- END a -->\noutro\n"
    assert render(doc, "a", "new") == "intro\n<!-- BEGIN a -->\nnew\n<!-- END a -->\noutro\n"
    with pytest.raises(ValueError, match="no section markers <!-- BEGIN b -->"):
        render(doc, "b", "new")
