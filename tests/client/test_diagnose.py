"""The diagnosis client's file handling: which files, read how, and what a bad one does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from client import diagnose
from client.diagnose import collect_images, read_images
from task.data.errors import BadFileError
from task.data.export import export_test_images
from task.data.pneumoniamnist import load_npz, resolve_path
from task.data.preprocess import preprocess_array
from task.runtime import checkpoint
from tests.factories import pattern, write_png
from tests.task.data.test_bad_inputs import CORPUS, build_corpus


def test_folders_are_searched_and_missing_paths_named(tmp_path) -> None:
    write_png(tmp_path / "a" / "x.png", pattern())
    write_png(tmp_path / "a" / "deeper" / "y.PNG", pattern())
    (tmp_path / "a" / "readme.txt").write_text("not an image")
    single = write_png(tmp_path / "z.png", pattern())
    found = collect_images([tmp_path / "a", single])
    assert [p.name for p in found] == ["y.PNG", "x.png", "z.png"]
    with pytest.raises(BadFileError, match=r"nothing\.png: no such file or folder"):
        collect_images([tmp_path / "nothing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadFileError, match="folder has no image files"):
        collect_images([tmp_path / "empty"])


def test_client_preprocessing_is_the_training_preprocessing(tmp_path, trained_checkpoint) -> None:
    """PNG files of the test split, read by the client, equal the arrays training evaluated."""
    from hydra.utils import instantiate

    config = checkpoint.load(trained_checkpoint)["config"]
    files = export_test_images(tmp_path, 5)
    images, kept, skipped = read_images(files, config)
    raw, _ = load_npz(resolve_path(None))["test"]
    expected = preprocess_array(raw[:5], instantiate(config["preprocess"]))
    assert kept == files and skipped == []
    np.testing.assert_allclose(images, expected, atol=1e-6)


def test_a_bad_image_is_refused_by_name_or_skipped_by_choice(tmp_path, trained_checkpoint) -> None:
    config = checkpoint.load(trained_checkpoint)["config"]
    good = write_png(tmp_path / "good.png", pattern())
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(BadFileError, match=r"broken\.png: cannot be read as an image"):
        read_images([good, bad], config)
    images, kept, skipped = read_images([good, bad], config, skip_bad=True)
    assert images.shape == (1, 1, 28, 28) and kept == [good]
    assert skipped[0]["path"] == str(bad) and "cannot be read" in skipped[0]["reason"]


@pytest.fixture(scope="module")
def inference_config() -> dict:
    """What a checkpoint announces (task.training.central): default preprocessing, one channel."""
    from omegaconf import OmegaConf

    from task.config import compose_config

    cfg = compose_config([])
    return {
        "preprocess": OmegaConf.to_container(cfg.transforms.preprocess, resolve=True),
        "channels": 1,
    }


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_every_corpus_file_is_refused_by_name(tmp_path, inference_config, case) -> None:
    """The bad-input corpus (tests/task/data/test_bad_inputs.py) at the diagnosis client:
    the error names the file and the reason, before any encrypted session starts."""
    good = write_png(tmp_path / "good.png", pattern())
    bad = case.build(tmp_path)
    with pytest.raises(BadFileError, match=case.reason) as info:
        read_images([good, bad], inference_config)
    assert case.shown in str(info.value)
    str(info.value).encode("utf-8")  # printable on any terminal


def test_skip_bad_keeps_the_good_images_and_lists_the_corpus(tmp_path, inference_config) -> None:
    good = write_png(tmp_path / "good.png", pattern())
    bad = build_corpus(tmp_path / "bad")
    found = collect_images([tmp_path])
    assert len(found) == len(CORPUS) + 1
    images, kept, skipped = read_images(found, inference_config, skip_bad=True)
    assert kept == [good] and images.shape[0] == 1 and np.isfinite(images).all()
    assert len(skipped) == len(CORPUS)
    assert {s["path"].rsplit("/", 1)[1] for s in skipped} == {c.shown for c in CORPUS}
    assert len(bad) == len(CORPUS)
    json.dumps(skipped).encode("utf-8")  # what --json writes
    with pytest.raises(BadFileError, match="no readable image to diagnose"):
        read_images(sorted(bad.values()), inference_config, skip_bad=True)


def test_a_device_this_machine_lacks_is_refused_before_anything_else(
    monkeypatch, capsys, tmp_path
) -> None:
    """``client.device`` is checked first: one line naming the key and the value, before
    the images are read or the service is dialled (a missing image and an unreachable
    service would otherwise be the error)."""
    dialled: list = []
    monkeypatch.setattr(diagnose, "ServiceConnection", lambda *a, **k: dialled.append(a))
    values = ["cuda:99", "mps", "gpu"] + (["cuda"] if not torch.cuda.is_available() else [])
    for value in values:
        argv = [str(tmp_path / "missing.png"), "--service", "127.0.0.1:9", "--insecure"]
        assert diagnose.main([*argv, f"client.device={value}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: client.device={value!r}"), err
    assert not dialled
