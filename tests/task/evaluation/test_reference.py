"""PneumoniaMNIST's published test split is recognised by content, and only it earns the
expert readers' comparison (issue 28)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from task.constants import EXPERT_READERS, PNEUMONIAMNIST_CLASSES
from task.data.content import array_content_hash
from task.data.folder import ImageFolderSource
from task.data.pneumoniamnist import PneumoniaMNISTSource, load_npz
from task.evaluation.reference import (
    PNEUMONIAMNIST_TEST_SHA256,
    comparison_line,
    is_published_test,
)
from task.evaluation.report import write_run_outputs


@pytest.fixture(scope="module")
def test_split(pneumoniamnist_path: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_npz(pneumoniamnist_path)["test"]


def _hash(images: np.ndarray, labels: np.ndarray) -> str:
    return array_content_hash(images, labels, PNEUMONIAMNIST_CLASSES)


def test_constant_is_the_bundled_test_split(test_split) -> None:
    images, labels = test_split
    assert len(labels) == 624
    assert _hash(images, labels) == PNEUMONIAMNIST_TEST_SHA256
    # Order is not content: the same images and labels shuffled are the same set.
    order = np.random.default_rng(0).permutation(len(labels))
    assert is_published_test(_hash(images[order], labels[order]))


def test_any_change_of_content_is_another_set(pneumoniamnist_path: Path, test_split) -> None:
    images, labels = test_split
    pixel = images.copy()
    pixel[5, 10, 10] ^= 1
    label = labels.copy()
    label[5] = 1 - label[5]
    val_images, val_labels = load_npz(pneumoniamnist_path)["val"]
    others = [
        _hash(pixel, labels),
        _hash(images, label),
        _hash(images[1:], labels[1:]),
        _hash(np.concatenate([images, images[:1]]), np.concatenate([labels, labels[:1]])),
        _hash(val_images, val_labels),
    ]
    assert not any(is_published_test(h) for h in others)
    assert len(set(others)) == len(others)
    assert not is_published_test(None)


def test_sources_carry_the_hash_of_what_they_loaded(tmp_path: Path, test_split) -> None:
    """The bundled file's test split, and the same images written as PNG class folders in
    another order, are recognised; a limited load is not."""
    full = PneumoniaMNISTSource().load()
    assert is_published_test(full.test.fingerprint)
    assert not is_published_test(full.val.fingerprint)
    assert not is_published_test(PneumoniaMNISTSource(limit=600).load().test.fingerprint)
    images, labels = test_split
    for i in np.random.default_rng(1).permutation(len(labels)):
        target = (
            tmp_path
            / "test"
            / PNEUMONIAMNIST_CLASSES[labels[i]]
            / f"x{i * 7919 % 1000:03d}_{i}.png"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(target)
    (tmp_path / "train" / "normal").mkdir(parents=True)
    (tmp_path / "train" / "pneumonia").mkdir(parents=True)
    for k in range(4):
        Image.fromarray(images[k]).save(
            tmp_path / "train" / PNEUMONIAMNIST_CLASSES[k % 2] / f"{k}.png"
        )
    train = str(tmp_path / "train")
    folder = ImageFolderSource(
        train, PNEUMONIAMNIST_CLASSES, val=train, test=str(tmp_path / "test"), resolution=28
    ).load()
    assert folder.test.fingerprint == PNEUMONIAMNIST_TEST_SHA256
    assert not is_published_test(folder.train.fingerprint)


def test_comparison_line_names_the_experts_only_on_the_published_split() -> None:
    test = {"auc": 0.97, "accuracy": 0.91, "mcc": 0.82}
    published = comparison_line(test, PNEUMONIAMNIST_TEST_SHA256)
    assert "expert readers (PriMIA): ACC 0.795  MCC 0.579" in published
    other = comparison_line(test, "0" * 64)
    assert other == "test AUC 0.970  ACC 0.910  MCC 0.820"
    assert "xpert" not in comparison_line(test, None)


@pytest.mark.parametrize("published", [True, False])
def test_run_outputs_hold_the_experts_only_on_the_published_split(
    tmp_path: Path, published: bool
) -> None:
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    test = {"auc": 1.0, "confusion_matrix": [[2, 0], [0, 2]]}
    write_run_outputs(
        tmp_path,
        {"test": test},
        test_labels=labels,
        test_probs=probs,
        classes=PNEUMONIAMNIST_CLASSES,
        history=[],
        curve_keys=(),
        xlabel="epoch",
        test_fingerprint=PNEUMONIAMNIST_TEST_SHA256 if published else "f" * 64,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics.get("expert_readers") == (EXPERT_READERS if published else None)
