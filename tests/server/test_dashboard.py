"""The consortium's dashboard: one offline wandb run per federation whose series hold the
pooled validation, each site's participation, ε per site and secure aggregation's stages.
The recorder is fed real round records; the run is read back from its ``.wandb`` file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord

from server.recorder import RoundRecorder
from strategies.round_record import RoundRecord
from task.config import compose_config
from task.constants import PNEUMONIAMNIST_CLASSES
from task.runtime.loggers import WandbLogger
from tests.wandb_offline import history, offline_runs

SITES = ("site-0", "site-1", "site-2")


def _record(r: int) -> RoundRecord:
    """Round 1: every site trains; round 2: site-1 declines, site-2's update is refused."""
    sites = {
        s: {"train": {}, "evaluate": {}, "privacy": {"epsilon": 0.5 * r + i}}
        for i, s in enumerate(SITES)
    }
    record = RoundRecord(
        round=r,
        train={"num-examples": 300, "secure-sites": 3 - r + 1},
        evaluate={"auc": 0.8 + r / 10, "mcc": 0.5 + r / 10},
        sites=sites,
        secure_seconds={"advertise": 0.25 * r, "unmask": 0.5},
    )
    if r == 2:
        del sites["site-1"]
        record.declined = {"site-1": "budget"}
        record.rejected = {"site-2": "update norm beyond the bound"}
        record.failures["train"] = 1
    return record


@pytest.fixture
def offline(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_one_offline_run_holds_each_rounds_series(offline: Path) -> None:
    cfg = compose_config(["logger=wandb", "model=small_cnn"])
    logger = WandbLogger(project="primia-test")
    logger.start(offline, {"seed": 0}, name="federation")
    recorder = RoundRecorder(offline, cfg, logger, None, PNEUMONIAMNIST_CLASSES)
    for r in (1, 2):
        recorder(_record(r), ArrayRecord({"w": torch.zeros(2)}), strategy_state={})
    logger.finish({"test/auc": 0.9})

    (run_file,) = offline_runs(offline)  # one run, offline, inside the run directory
    rows = {row["_step"]: row for row in history(run_file)}
    first, second = rows[1], rows[2]
    assert first["global/val_auc"] == pytest.approx(0.9)
    assert second["global/val_mcc"] == pytest.approx(0.7)
    assert [first[f"site/{s}/participated"] for s in SITES] == [1, 1, 1]
    assert [second[f"site/{s}/participated"] for s in SITES] == [1, 0, 0]
    assert second["site/site-1/declined"] == 1 and second["site/site-2/rejected"] == 1
    assert second["global/failures_train"] == 1
    assert second["privacy/epsilon/site-0"] == pytest.approx(1.0)
    assert second["privacy/epsilon/site-2"] == pytest.approx(3.0)
    assert first["secagg/advertise_seconds"] == pytest.approx(0.25)
    assert second["secagg/advertise_seconds"] == pytest.approx(0.5)
    assert second["secagg/unmask_seconds"] == pytest.approx(0.5)


def test_the_wandb_logger_is_offline_unless_configured() -> None:
    cfg = compose_config(["logger=wandb"])
    assert cfg.logger.mode == "offline" and WandbLogger().mode == "offline"
