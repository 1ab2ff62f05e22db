"""The bundled PneumoniaMNIST: found, hash-checked, never downloaded in tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from task.data.pneumoniamnist import PneumoniaMNISTSource, resolve_path, verify_file


def test_loads_published_splits(pneumoniamnist_path: Path) -> None:
    splits = PneumoniaMNISTSource(path=str(pneumoniamnist_path)).load()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4708, 524, 624)
    assert splits.train.class_counts(2) == [1214, 3494]
    assert splits.test.class_counts(2) == [234, 390]
    assert splits.train.images.shape[1:] == (1, 28, 28)
    assert splits.train.images.dtype == np.float32


def test_env_var_sets_path(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRIMIA_DATA", str(tmp_path / "x.npz"))
    assert resolve_path(None) == tmp_path / "x.npz"
    assert resolve_path("/explicit.npz") == Path("/explicit.npz")


def test_modified_file_is_refused(pneumoniamnist_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pneumoniamnist.npz"
    shutil.copy(pneumoniamnist_path, copy)
    shutil.copy(
        pneumoniamnist_path.with_name("pneumoniamnist.npz.sha256"),
        tmp_path / "pneumoniamnist.npz.sha256",
    )
    assert verify_file(copy) == "sha256"
    with copy.open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="sha256"):
        PneumoniaMNISTSource(path=str(copy)).load()


def test_unverifiable_file_without_sidecar_is_refused(pneumoniamnist_path, tmp_path) -> None:
    copy = tmp_path / "p.npz"
    shutil.copy(pneumoniamnist_path, copy)  # the bundled file differs from the published one
    with pytest.raises(ValueError, match="published PneumoniaMNIST md5"):
        verify_file(copy)


def test_missing_file_does_not_download(tmp_path: Path, monkeypatch) -> None:
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    with pytest.raises(FileNotFoundError, match="PRIMIA_DATA"):
        PneumoniaMNISTSource(path=str(tmp_path / "missing.npz")).load()


def test_wrong_class_order_is_refused() -> None:
    with pytest.raises(ValueError, match="label order"):
        PneumoniaMNISTSource(classes=["pneumonia", "normal"])
