"""The coordinator's round recorder: which round's weights the federation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord

from server.recorder import RoundRecorder
from strategies.round_record import RoundRecord
from task.config import compose_config
from task.constants import CHECKPOINT_BEST, CHECKPOINT_LAST, PNEUMONIAMNIST_CLASSES
from task.runtime.checkpoint import load
from task.runtime.loggers import NullLogger


def _recorder(run_dir: Path, state: dict | None = None) -> RoundRecorder:
    cfg = compose_config(["logger=none", "model=small_cnn"])
    return RoundRecorder(run_dir, cfg, NullLogger(), state, PNEUMONIAMNIST_CLASSES)


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), value)}


def _round(recorder: RoundRecorder, number: int, mcc: float) -> None:
    record = RoundRecord(round=number, evaluate={"mcc": mcc})
    recorder(record, ArrayRecord(_weights(float(number))), strategy_state={})


def test_val_mcc_tests_the_best_round_and_last_the_final_one(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    for number, mcc in ((1, 0.70), (2, 0.91), (3, 0.88)):
        _round(recorder, number, mcc)
    best_round, best = recorder.tested("val_mcc")
    last_round, last = recorder.tested("last")
    assert (best_round, float(best["w"][0])) == (2, 2.0)
    assert (last_round, float(last["w"][0])) == (3, 3.0)
    assert load(tmp_path / CHECKPOINT_BEST)["round"] == 2


def test_a_resumed_recorder_knows_the_last_round_from_its_checkpoint(tmp_path: Path) -> None:
    first = _recorder(tmp_path)
    for number, mcc in ((1, 0.90), (2, 0.80)):
        _round(first, number, mcc)
    resumed = _recorder(tmp_path, load(tmp_path / CHECKPOINT_LAST))
    assert resumed.tested("last")[0] == 2 and resumed.tested("val_mcc")[0] == 1
    _round(resumed, 3, 0.85)
    assert resumed.tested("last")[0] == 3 and resumed.tested("val_mcc")[0] == 1


def test_no_round_with_a_validation_mcc_is_refused_by_name(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    recorder(RoundRecord(round=1), ArrayRecord(_weights(1.0)), strategy_state={})
    assert recorder.tested("last")[0] == 1
    with pytest.raises(RuntimeError, match=r"federation\.selection=val_mcc"):
        recorder.tested("val_mcc")


def test_the_validated_average_is_tested_and_the_global_model_resumed(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    for number, mcc in ((1, 0.80), (2, 0.90)):
        record = RoundRecord(round=number, evaluate={"mcc": mcc})
        glob, average = ArrayRecord(_weights(float(number))), ArrayRecord(_weights(-number))
        recorder(record, glob, strategy_state={}, evaluated=average)
    assert float(recorder.tested("val_mcc")[1]["w"][0]) == -2.0
    assert float(load(tmp_path / CHECKPOINT_BEST)["model"]["w"][0]) == -2.0
    last = load(tmp_path / CHECKPOINT_LAST)
    assert float(last["arrays"]["w"][0]) == 2.0  # a resumed run trains on from the aggregate
    assert float(last["evaluated_arrays"]["w"][0]) == -2.0
    resumed = _recorder(tmp_path, last)
    assert float(resumed.tested("last")[1]["w"][0]) == -2.0
