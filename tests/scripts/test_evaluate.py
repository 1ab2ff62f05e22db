"""``scripts.evaluate`` on a really trained checkpoint and real files (issue 28).

A checkpoint is trained in this module by the real centralised run (a few steps, with a
bootstrap and a seed other than the defaults), so that its ``metrics.json`` is the
reference: evaluating the bundled test split must give the training run's test metrics
exactly, interval included.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from task.config import compose_config
from task.constants import (
    CHECKPOINT_FINAL,
    EXPERT_READERS,
    PNEUMONIAMNIST_CLASSES,
    PROGRESS_LOGGER,
    REPO_ROOT,
)
from task.data.pneumoniamnist import load_npz
from task.evaluation.evaluate import run
from task.evaluation.trained import CheckpointError
from task.runtime import checkpoint
from task.training.central import run as train
from tests.factories import write_dicom, write_nifti, write_png

SEED, N_BOOTSTRAP = 3, 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pneumoniamnist_path) -> Path:
    """The run directory of a briefly trained centralised model (the full published
    splits, so its test split is PneumoniaMNIST's)."""
    run_dir = tmp_path_factory.mktemp("trained")
    overrides = [
        "logger=none",
        "model=small_cnn",
        "train.epochs=1",
        "train.max_steps_per_epoch=8",
        "train.progress=false",
        f"metrics.n_bootstrap={N_BOOTSTRAP}",
        f"seed={SEED}",
    ]
    train(compose_config(overrides, config_name="train_central"), run_dir)
    return run_dir


def _evaluate(run_dir: Path, checkpoint_path: Path, *overrides: str) -> dict:
    cfg = compose_config(
        [f"checkpoint={checkpoint_path}", f"seed={SEED}", *overrides], config_name="evaluate"
    )
    return run(cfg, run_dir)


def _predictions(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "predictions.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_bundled_test_split_gives_the_training_runs_test_metrics(
    trained: Path, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    out = tmp_path / "eval"
    metrics = _evaluate(out, trained / CHECKPOINT_FINAL, f"metrics.n_bootstrap={N_BOOTSTRAP}")
    reference = json.loads((trained / "metrics.json").read_text())
    written = json.loads((out / "metrics.json").read_text())
    assert written["test"] == reference["test"]  # every number, the AUC interval included
    assert written["test"]["auc_ci"]["n_bootstrap"] == N_BOOTSTRAP
    # The published split, recognised by content: the experts in both reports and lines.
    assert written["data"]["published_test_split"] is True
    assert written["expert_readers"] == reference["expert_readers"] == EXPERT_READERS
    assert "expert readers (PriMIA)" in caplog.text
    assert written["threshold"] == {"mode": "checkpoint", "value": None, "rule": "arg-max"}
    assert metrics["checkpoint"]["classes"] == list(PNEUMONIAMNIST_CLASSES)
    for name in ("roc.png", "calibration.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0
    rows = _predictions(out)
    assert len(rows) == 624 and list(rows[0]) == ["path", "label", "probability", "prediction"]
    assert rows[0]["path"].endswith("#test/0")
    cm = np.zeros((2, 2), int)
    for row in rows:
        true, predicted = (PNEUMONIAMNIST_CLASSES.index(row[k]) for k in ("label", "prediction"))
        cm[true, predicted] += 1
        assert (float(row["probability"]) > 0.5) == (row["prediction"] == "pneumonia")
    assert cm.tolist() == written["test"]["confusion_matrix"]


def _write_files(root: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """The images as PNG, DICOM and NIfTI files in class folders; also a CSV of them."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / "images" / PNEUMONIAMNIST_CLASSES[label]
        writer, suffix = [(write_png, "png"), (write_dicom, "dcm"), (write_nifti, "nii.gz")][i % 3]
        paths.append(writer(folder / f"{i:03d}.{suffix}", image))
    with (root / "list.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        for path in paths:
            writer.writerow([path.relative_to(root), path.parent.name])
    return paths


def test_folder_and_csv_of_dicom_png_nifti_files(
    trained: Path, tmp_path: Path, pneumoniamnist_path: Path, caplog
) -> None:
    """Files of three formats, as a folder and as a CSV, give the probabilities the same
    images give from the npz; a set that is not the published split says nothing of the
    experts."""
    n = 30
    images, labels = load_npz(pneumoniamnist_path)["test"]
    paths = _write_files(tmp_path, images[:n], labels[:n])
    ckpt = trained / CHECKPOINT_FINAL
    caplog.set_level(logging.INFO, logger=PROGRESS_LOGGER)
    by_folder = _evaluate(tmp_path / "folder", ckpt, f"data.path={tmp_path / 'images'}")
    by_csv = _evaluate(tmp_path / "csv", ckpt, f"data.path={tmp_path / 'list.csv'}")
    bundled = _evaluate(tmp_path / "npz", ckpt, f"data.limit={n}")
    assert by_folder["test"] == by_csv["test"] == bundled["test"]
    assert by_folder["test"]["n"] == n
    assert by_folder["data"]["content_sha256"] == bundled["data"]["content_sha256"]
    for result in (by_folder, by_csv, bundled):
        assert result["data"]["published_test_split"] is False
        assert "expert_readers" not in result
    assert "xpert" not in caplog.text
    rows = {Path(r["path"]).name: r for r in _predictions(tmp_path / "folder")}
    npz_rows = _predictions(tmp_path / "npz")
    for i, path in enumerate(paths):
        assert rows[path.name]["label"] == PNEUMONIAMNIST_CLASSES[labels[i]]
        assert rows[path.name]["probability"] == npz_rows[i]["probability"]


def test_threshold_for_a_target_sensitivity(trained: Path, tmp_path: Path) -> None:
    """Fixed on the validation split and applied to the test split; fixed on the
    evaluated set itself (here the validation split), the same threshold, whose
    sensitivity there reaches the target."""
    ckpt = trained / CHECKPOINT_FINAL
    sensitivity = ["threshold.mode=sensitivity", "threshold.target=0.99"]
    on_test = _evaluate(tmp_path / "test", ckpt, *sensitivity, "threshold.data={split: val}")
    threshold = on_test["threshold"]
    assert threshold["fixed_on"].endswith("(val split)")
    assert threshold["positive_class"] == "pneumonia"
    assert on_test["test"]["threshold"] == threshold["value"]
    for row in _predictions(tmp_path / "test"):
        above = float(row["probability"]) >= threshold["value"]
        assert above == (row["prediction"] == "pneumonia")
    on_val = _evaluate(tmp_path / "val", ckpt, *sensitivity, "data.split=val")
    assert on_val["threshold"]["fixed_on"] == "the evaluated set"
    assert on_val["threshold"]["value"] == threshold["value"]
    assert on_val["test"]["per_class"]["pneumonia"]["sensitivity"] >= 0.99
    with pytest.raises(ValueError, match=r"threshold\.mode=checkpoint fixes no threshold"):
        _evaluate(tmp_path / "x", ckpt, "threshold.data={split: val}")
    with pytest.raises(ValueError, match=r"threshold\.mode=.youden. is not one of"):
        _evaluate(tmp_path / "y", ckpt, "threshold.mode=youden")
    with pytest.raises(ValueError, match=r"threshold\.data has unknown keys \['splt'\]"):
        _evaluate(tmp_path / "z", ckpt, *sensitivity, "threshold.data={splt: val}")


def test_mismatched_checkpoint_is_refused_by_name(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / CHECKPOINT_FINAL
    for name in ("x", "y"):
        write_png(tmp_path / "other" / name / "a.png", np.zeros((28, 28), np.uint8))
    with pytest.raises(CheckpointError) as err:
        _evaluate(tmp_path / "o", ckpt, f"data.path={tmp_path / 'other'}")
    assert str(err.value) == (
        f"checkpoint {ckpt} was trained on classes ['normal', 'pneumonia'], the data has ['x', 'y']"
    )
    with pytest.raises(CheckpointError, match="was trained at 28 px, the data config asks 64"):
        _evaluate(tmp_path / "r", ckpt, "data.resolution=64")
    state = checkpoint.load(ckpt)
    at_64 = {**state, "config": {**state["config"], "resolution": 64}}
    checkpoint.save_atomic(at_64, tmp_path / "64.pt")
    with pytest.raises(CheckpointError, match="was trained at 64 px, the data config asks 28 px"):
        _evaluate(tmp_path / "s", tmp_path / "64.pt", "data.resolution=28")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt: not a readable checkpoint"):
        _evaluate(tmp_path / "j", tmp_path / "junk.pt")
    checkpoint.save_atomic({"model": state["model"]}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match=r"bare\.pt: has no inference config"):
        _evaluate(tmp_path / "b", tmp_path / "bare.pt")


@pytest.mark.slow
def test_command_line_writes_outputs_and_refuses_in_one_line(trained: Path, tmp_path: Path) -> None:
    def call(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "scripts.evaluate", *args],
            cwd=REPO_ROOT,
            env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    ckpt = trained / CHECKPOINT_FINAL
    done = call(f"checkpoint={ckpt}", f"seed={SEED}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "624 images of" in done.stdout and "expert readers (PriMIA)" in done.stdout
    for name in ("metrics.json", "roc.png", "calibration.png", "predictions.csv", "report.html"):
        assert (tmp_path / "run" / name).is_file()
    refused = call(f"checkpoint={ckpt}", "data.resolution=64", f"hydra.run.dir={tmp_path / 'x'}")
    assert refused.returncode == 2
    assert f"checkpoint {ckpt} was trained at 28 px, the data config asks 64 px" in refused.stderr
    assert "Traceback" not in refused.stderr
