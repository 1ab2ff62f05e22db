"""The real entry point, as a user runs it: outputs, wandb offline, resume, sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from task.constants import CHECKPOINT_LAST, REPO_ROOT
from task.runtime import checkpoint

pytestmark = pytest.mark.slow


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.train_central", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_run_writes_metrics_plots_checkpoints_and_wandb(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _run("experiment=quick", "train.epochs=2", f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("auc", "accuracy", "mcc", "balanced_accuracy", "auc_ci", "confusion_matrix"):
        assert key in metrics["test"]
    assert metrics["test"]["auc"] > 0.7  # 256 images, 2 epochs: clearly better than chance
    assert metrics["test"]["auc_ci"]["low"] <= metrics["test"]["auc"]
    for name in ("roc.png", "confusion_matrix.png", "curves.png", "best.pt", "last.pt"):
        assert (run_dir / name).stat().st_size > 0
    assert "<h2>Metrics (test)</h2>" in (run_dir / "report.html").read_text()
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run missing"

    resumed = tmp_path / "resumed"
    proc = _run(
        "experiment=quick",
        "train.epochs=3",
        "logger=none",
        f"hydra.run.dir={resumed}",
        f"resume={run_dir / 'last.pt'}",
    )
    again = json.loads((resumed / "metrics.json").read_text())
    assert again["epochs_run"] == 3  # two epochs from the checkpoint, one more
    # Continued, not restarted (a run that ignored resume= would also count 3 epochs): the
    # first two rows are the checkpoint's own, timings included, which no rerun reproduces,
    # and only epoch 3 trained in this run.
    before = checkpoint.load(run_dir / CHECKPOINT_LAST)["history"]
    after = checkpoint.load(resumed / CHECKPOINT_LAST)["history"]
    assert [h["epoch"] for h in before] == [1, 2]
    assert after[:2] == before and after[2]["epoch"] == 3
    log = proc.stdout + proc.stderr
    assert f"resumed from {run_dir / CHECKPOINT_LAST} at epoch 3" in log
    assert "epoch 3: loss" in log
    assert "epoch 1: loss" not in log and "epoch 2: loss" not in log


def test_misspelt_override_fails_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.train_central",
            "train.epohcs=2",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "epohcs" in proc.stderr


def test_multirun_sweep_and_optuna_search(tmp_path: Path) -> None:
    _run(
        "-m",
        "experiment=quick",
        "logger=none",
        "optimizer.lr=0.001,0.003",
        f"hydra.sweep.dir={tmp_path / 'grid'}",
    )
    assert sorted(p.name for p in (tmp_path / "grid").iterdir() if p.is_dir()) == ["0", "1"]
    for sub in ("0", "1"):
        assert (tmp_path / "grid" / sub / "metrics.json").is_file()

    _run(
        "hparams_search=central_optuna",
        "experiment=quick",
        "logger=none",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path / 'optuna'}",
    )
    best = (tmp_path / "optuna" / "optimization_results.yaml").read_text()
    assert "best_params" in best and "best_value" in best
