"""The federated config is checked once, when composed: each bad value is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from server.federation import resolve_run_dir, settings
from task.config import compose_config
from task.federation.settings import FederationSettings, check_federated_config
from task.runtime.run_options import resume_path


def test_the_default_config_passes_and_its_settings_are_those_of_the_yaml() -> None:
    cfg = compose_config()
    federation = check_federated_config(cfg)
    assert federation == FederationSettings(**OmegaConf.to_container(cfg.federation, resolve=True))
    assert federation.selection == cfg.federation.selection


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("federation.num_rounds=abc", "federation.num_rounds='abc' must be int"),
        ("federation.num_rounds=0", "federation.num_rounds=0 must be at least 1"),
        ("federation.local_steps=0", "federation.local_steps=0"),
        ("federation.selection=best", "federation.selection='best'"),
        ("federation.lr_schedule=step", "federation.lr_schedule='step'"),
        ("federation.fraction_train=1.5", "federation.fraction_train=1.5"),
        ("federation.site_val_fraction=1.0", "federation.site_val_fraction=1.0"),
        ("federation.ema_decay=1", "federation.ema_decay=1"),
        ("federation.max_update_norm=0", "federation.max_update_norm=0"),
        ("federation.secure_normalisation=1", "federation.secure_normalisation=1 must be bool"),
        ("+federation.rounds=3", "unknown keys ['rounds']"),
        ("train.precision=fp16", "train.precision='fp16'"),
        ("device=gpu", "device='gpu' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("resume=true", "resume=True must be the path"),
    ],
)
def test_a_bad_value_fails_when_the_config_is_composed(override: str, named: str) -> None:
    with pytest.raises(ValueError) as err:
        compose_config([override])
    assert named in str(err.value)
    assert "\n" not in str(err.value)


def test_resume_is_a_path_or_null() -> None:
    assert resume_path(None) is None
    assert resume_path("outputs/train/x/last.pt") == Path("outputs/train/x/last.pt")
    for bad in (True, False, ""):
        with pytest.raises(ValueError, match=r"must be the path of a run's last\.pt"):
            resume_path(bad)


def test_a_resumed_federation_goes_on_in_its_checkpoints_directory(tmp_path: Path) -> None:
    last = tmp_path / "run" / "last.pt"
    assert resolve_run_dir(compose_config([f"resume={last}"])) == last.parent
    same = compose_config([f"resume={last}", f"run_dir={last.parent}"])
    assert resolve_run_dir(same) == last.parent
    with pytest.raises(ValueError, match="goes on in its own run directory"):
        resolve_run_dir(compose_config([f"resume={last}", f"run_dir={tmp_path / 'other'}"]))


def test_a_missing_checkpoint_is_refused_before_any_round(tmp_path: Path) -> None:
    last = tmp_path / "run" / "last.pt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        settings(compose_config([f"resume={last}", "logger=none"]))
    assert not last.parent.exists()  # nothing made for a mistyped path
