"""Hydra is the one source of configuration, also inside the Flower apps."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from task.config import compose_config, overrides_from_run_config


def test_run_config_carries_experiment_and_overrides() -> None:
    run_config = {"experiment": "fed_quick", "overrides": "seed=3 'run_name=a b'"}
    assert overrides_from_run_config(run_config) == [
        "experiment=fed_quick",
        "seed=3",
        "run_name=a b",
    ]
    cfg = compose_config(overrides_from_run_config(run_config))
    assert cfg.seed == 3 and cfg.federation.num_rounds == 3 and cfg.run_name == "a b"


def test_unknown_run_config_key_is_refused() -> None:
    with pytest.raises(ValueError, match="num-rounds"):
        overrides_from_run_config({"num-rounds": 3})


def test_misspelt_override_fails_at_start() -> None:
    with pytest.raises(ConfigCompositionException, match="federaton"):
        compose_config(["federaton.num_rounds=2"])


def test_default_choice_reads_the_defaults_list() -> None:
    from task.config import default_choice

    for group in ("model", "strategy", "secure", "partition"):
        chosen = compose_config([f"{group}={default_choice(group)}"])
        assert chosen[group] == compose_config([])[group], group
    assert compose_config(
        [f"model={default_choice('model', 'train_central')}"], "train_central"
    ).model == (compose_config([], "train_central").model)
    with pytest.raises(ValueError, match="selects no 'privacy'"):
        default_choice("privacy", "train_central")  # the centralised baseline has no privacy group
