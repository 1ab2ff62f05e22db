"""``python -m scripts.check_site``: a hospital's readiness check on real files, read as
training reads them, and its exit status under each ``on_bad_file`` policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hydra.utils import instantiate
from pydicom.uid import RLELossless, SegmentationStorage

from task.config import compose_config
from task.constants import REPO_ROOT
from task.data.folder import ImageFolderSource
from task.data.site_check import check_site
from task.data.sites import reading_settings
from tests.factories import pattern, write_dicom, write_png

CHECK = [sys.executable, "-m", "scripts.check_site"]


def _call(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run ``cmd`` as a hospital would: without HYDRA_FULL_ERROR, so errors are one line."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _dicom(path: Path, compress=None, **attrs) -> Path:
    return write_dicom(
        path, pattern(64, 96, dtype=np.uint16, high=4000), compress=compress, **attrs
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """PNGs and DICOMs (windowed, RLE-compressed) per class, and three bad files."""
    root = tmp_path / "site"
    for c, cls in enumerate(("normal", "pneumonia")):
        for i in range(3):
            write_png(root / cls / f"{cls}-{i}.png", pattern() + 10 * c + i)
        _dicom(root / cls / "windowed.dcm", WindowCenter=2000, WindowWidth=1000)
        _dicom(root / cls / "rle.dcm", compress=RLELossless)
    (root / "normal" / "broken.png").write_bytes(b"not an image")
    _dicom(root / "pneumonia" / "seg.dcm", SOPClassUID=SegmentationStorage)
    write_dicom(root / "pneumonia" / "cine.dcm", np.zeros((40, 30), np.uint16))
    cine = pydicom.dcmread(root / "pneumonia" / "cine.dcm")
    cine.Rows, cine.NumberOfFrames = 20, 2
    cine.save_as(root / "pneumonia" / "cine.dcm", enforce_file_format=True)
    return root


def _check(data_path: Path, *overrides: str):
    cfg = compose_config([f"data_path={data_path}", *overrides], config_name="check_site")
    source = ImageFolderSource(**reading_settings(cfg, str(data_path)))
    return cfg, source, check_site(source, instantiate(cfg.transforms.preprocess))


def test_counts_bad_files_and_facts(site: Path) -> None:
    _, _, result = _check(site)
    assert dict(result.per_class) == {"normal": 5, "pneumonia": 5}
    reasons = {Path(item["path"]).name: item["reason"] for item in result.bad}
    assert set(reasons) == {"broken.png", "seg.dcm", "cine.dcm"}
    assert reasons["seg.dcm"] == "SOP class Segmentation Storage is not an image"
    assert reasons["cine.dcm"] == "multi-frame image (NumberOfFrames=2) is not supported"
    assert result.sizes == {"20x30": 6, "64x96": 4}
    assert result.bits == {"8": 6, "12": 4}
    assert result.photometric == {"L": 6, "MONOCHROME2": 4}
    assert result.encodings == {"PNG": 6, "Explicit VR Little Endian": 2, "RLE Lossless": 2}
    lines = result.lines()
    assert "class normal: 5" in lines and "transfer syntaxes / formats: PNG (6), " in "\n".join(
        lines
    )
    assert sum(line.startswith("bad: ") for line in lines) == 3


def test_intensity_range_is_what_training_sees(site: Path) -> None:
    """The same settings, reader and preprocessing as the site's training load."""
    cfg, _, result = _check(site, "data.on_bad_file=skip", "data.resolution=16")
    settings = {**reading_settings(cfg, str(site)), "val_fraction": 0.2, "seed": 0}
    trained = ImageFolderSource(**settings).load(instantiate(cfg.transforms.preprocess))
    images = np.concatenate([trained.train.images, trained.val.images])
    assert images.shape[-2:] == (16, 16)
    assert (result.low, result.high) == (float(images.min()), float(images.max()))
    assert trained.report.n_skipped == len(result.bad) == 3


def test_policy_decides_whether_bad_files_stop_training(site: Path) -> None:
    _, _, stopping = _check(site)
    assert stopping.policy == "error"
    assert ["3 bad file(s) and on_bad_file=error" in p for p in stopping.problems()] == [True]
    _, _, skipping = _check(site, "data.on_bad_file=skip")
    assert skipping.problems() == []


def test_a_class_without_images_is_a_problem_and_csv_is_read(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "a.png", pattern())
    write_png(tmp_path / "img" / "b.png", pattern())
    csv = tmp_path / "site.csv"
    csv.write_text("path,label\nimg/a.png,normal\nimg/b.png,normal\nimg/gone.png,pneumonia\n")
    _, _, result = _check(csv, "data.on_bad_file=skip")
    assert dict(result.per_class) == {"normal": 2}
    assert [item["reason"] for item in result.bad] == ["file named on CSV line 4 does not exist"]
    assert result.problems() == ["class 'pneumonia' has no usable image"]


@pytest.mark.slow
def test_the_command_exits_by_policy_and_writes_its_summary(site: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stopped = _call([*CHECK, f"data_path={site}", f"hydra.run.dir={run_dir}"])
    assert stopped.returncode == 1, stopped.stderr[-2000:]
    assert "NOT READY: 3 bad file(s) and on_bad_file=error" in stopped.stdout
    assert f"bad: {site / 'pneumonia' / 'seg.dcm'}: SOP class Segmentation" in stopped.stdout
    assert "intensity after preprocessing: " in stopped.stdout
    summary = json.loads((run_dir / "check_site.json").read_text())
    assert summary["classes"] == {"normal": 5, "pneumonia": 5} and len(summary["bad"]) == 3

    ready = _call(
        [*CHECK, f"data_path={site}", "data.on_bad_file=skip", f"hydra.run.dir={run_dir}"]
    )
    assert ready.returncode == 0, ready.stderr[-2000:]
    assert "ready: " in ready.stdout

    missing = _call([*CHECK, f"data_path={tmp_path / 'nowhere'}", f"hydra.run.dir={run_dir}"])
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: data_path=") and missing.stderr.count("\n") == 1
