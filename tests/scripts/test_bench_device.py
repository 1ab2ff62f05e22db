"""scripts.bench_device: its device names, and a tiny run that writes the JSON with the
machine's facts, both figures of the centralised comparison and a secure federated round."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.bench_device import DeviceUnavailableError, _device, main


def test_device_names():
    assert _device("cpu") == torch.device("cpu")
    assert _device("auto").type in ("cpu", "cuda")
    with pytest.raises(DeviceUnavailableError, match="--device='tpu' is not one of"):
        _device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA GPU is visible"):
            _device("cuda")


@pytest.mark.slow
def test_a_tiny_run_writes_the_figures_and_the_facts(tmp_path):
    main(
        [
            "--device=cpu",
            "--models=densenet121",
            "--resolution=32",
            "--batch=2",
            "--steps=1",
            "--warmup=0",
            "--rounds=1",
            "--skip-encrypted",
            "--cache-images=24",
            "--cache-source-px=64",
            "--cache-epochs=2",
            f"--out={tmp_path}",
        ]
    )
    result = json.loads((tmp_path / "bench_device.json").read_text())
    assert result["machine"]["cores"] >= 1
    assert result["device"]["device"] == "cpu"
    assert "upsampled to 32 px" in result["workload"]["data"]
    central = result["models"]["densenet121"]["centralised"]
    assert central["project_images_per_s"] > 0 and central["plain_images_per_s"] > 0
    assert central["ratio"] == pytest.approx(
        central["project_images_per_s"] / central["plain_images_per_s"]
    )
    fed = result["models"]["densenet121"]["federated"]
    assert "secure=smpc" in fed["overrides"]
    assert fed["first_round"]["images"] == 3 * 2 * 1  # 3 sites, one step of 2 images each
    assert set(fed["first_round"]["secure_seconds"]) >= {"share", "unmask"}
    cache = result["site_cache"]
    assert cache["files"] == 24 and "DICOM, RLE Lossless" in cache["source"]
    assert cache["first_epoch"]["load_seconds"] > cache["next_process"]["load_seconds"] > 0
    assert cache["later_over_first"] == pytest.approx(
        (cache["train_images"] / cache["later_epoch"]["epoch_seconds"])
        / cache["first_epoch"]["images_per_s"]
    )
