"""The centralised loop: learns, checkpoints by MCC, stops early, and resumes exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from monai.utils import set_determinism

from task.constants import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LAST,
    PROGRESS_LOGGER,
    REPO_ROOT,
)
from task.models.factory import build_model
from task.runtime import checkpoint
from task.training.central import TrainSettings, fit


def _setup(limit: int = 192):
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train_central",
            [f"data.limit={limit}", "model=small_cnn", "model.channels=[8,16,32,64]"],
        )
    set_determinism(seed=0)
    splits = instantiate(cfg.data).load(instantiate(cfg.transforms.preprocess))
    model = build_model(cfg.model, splits.in_shape, 2)
    opt = instantiate(cfg.optimizer)(params=model.parameters())
    return cfg, splits, model, opt, instantiate(cfg.transforms.augment)


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resume_reaches_same_weights_as_uninterrupted(tmp_path: Path, ema_decay) -> None:
    settings = dict(batch_size=32, progress=False, max_steps_per_epoch=3, ema_decay=ema_decay)
    _cfg, splits, model, opt, aug = _setup()
    fit(model, splits, opt, TrainSettings(epochs=3, **settings), tmp_path / "a", augment=aug)
    straight = model.state_dict()

    _cfg, splits, model, opt, aug = _setup()
    fit(model, splits, opt, TrainSettings(epochs=1, **settings), tmp_path / "b", augment=aug)
    _cfg, splits, model, opt, aug = _setup()  # a fresh process would rebuild everything
    history = fit(
        model,
        splits,
        opt,
        TrainSettings(epochs=3, **settings),
        tmp_path / "b",
        augment=aug,
        resume=tmp_path / "b" / CHECKPOINT_LAST,
    )
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for key, value in straight.items():
        assert torch.equal(value, model.state_dict()[key]), key
    best_a = checkpoint.load(tmp_path / "a" / CHECKPOINT_BEST)
    best_b = checkpoint.load(tmp_path / "b" / CHECKPOINT_BEST)
    for key, value in best_a["model"].items():
        assert torch.equal(value, best_b["model"][key]), key
    if ema_decay is not None:  # best.pt holds the averaged weights, not the raw ones
        assert not all(torch.equal(v, straight[k]) for k, v in best_a["model"].items())


def test_best_checkpoint_has_best_val_mcc(tmp_path: Path) -> None:
    _cfg, splits, model, opt, aug = _setup()
    history = fit(
        model,
        splits,
        opt,
        TrainSettings(epochs=4, batch_size=32, progress=False, max_steps_per_epoch=2),
        tmp_path,
        augment=aug,
    )
    best = checkpoint.load(tmp_path / CHECKPOINT_BEST)
    mccs = [h["val_mcc"] for h in history]
    assert best["best_mcc"] == max(mccs)
    assert best["best_epoch"] == 1 + mccs.index(max(mccs))
    assert all(h["train_examples"] == 64 for h in history)  # examples, not batches


#: Validation MCCs of the epochs, scripted: a new best at epochs 1, 2 and 4, none after.
SCRIPTED_MCC = [0.1, 0.3, 0.2, 0.4, 0.35, 0.3, 0.38, 0.2]


@pytest.mark.parametrize(("patience", "epochs_run"), [(2, 6), (3, 7), (None, 8)])
def test_early_stopping_stops_after_patience_epochs_without_a_new_best(
    tmp_path: Path, monkeypatch, caplog, patience, epochs_run
) -> None:
    """The validation MCC is scripted (test hook on the metrics ``fit`` reads), so the
    epoch at which the rule must stop is known. ``patience=None`` is the control: the same
    run without early stopping trains every epoch."""
    from task.training import central

    real, scripted = central.clinical_metrics, iter(SCRIPTED_MCC)
    monkeypatch.setattr(
        central, "clinical_metrics", lambda *a, **kw: real(*a, **kw) | {"mcc": next(scripted)}
    )
    _cfg, splits, model, opt, aug = _setup()
    settings = TrainSettings(
        epochs=len(SCRIPTED_MCC),
        batch_size=32,
        progress=False,
        max_steps_per_epoch=1,
        early_stopping_patience=patience,
    )
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):  # a line a person follows
        history = fit(model, splits, opt, settings, tmp_path, augment=aug)
    assert [h["epoch"] for h in history] == list(range(1, epochs_run + 1))
    assert [h["val_mcc"] for h in history] == SCRIPTED_MCC[:epochs_run]
    assert checkpoint.load(tmp_path / CHECKPOINT_BEST)["best_epoch"] == 4
    stopped = f"early stopping at epoch {epochs_run}: no MCC gain for {patience} epochs"
    assert (stopped in caplog.text) == (patience is not None)


def test_last_epoch_selection_saves_the_final_weights(tmp_path: Path) -> None:
    _cfg, splits, model, opt, aug = _setup()
    settings = TrainSettings(
        epochs=3, batch_size=32, progress=False, max_steps_per_epoch=2, selection="last"
    )
    history = fit(model, splits, opt, settings, tmp_path, augment=aug)
    final = checkpoint.load(tmp_path / CHECKPOINT_FINAL)
    assert final["epoch"] == len(history) == 3
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in final["model"].items())
    # best.pt is still the best validation MCC, as PriMIA selected
    mccs = [h["val_mcc"] for h in history]
    assert checkpoint.load(tmp_path / CHECKPOINT_BEST)["epoch"] == 1 + mccs.index(max(mccs))
    with pytest.raises(ValueError, match=r"train\.selection='best'"):
        TrainSettings(selection="best")


def test_a_device_the_machine_lacks_stops_the_run_before_any_work(
    tmp_path: Path, monkeypatch
) -> None:
    from task.config import compose_config
    from task.runtime.device import DeviceError
    from task.training.central import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config(["device=cuda", "logger=none"], config_name="train_central")
    with pytest.raises(DeviceError, match=r"^device='cuda': no CUDA GPU"):
        run(cfg, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing loaded, trained or written
