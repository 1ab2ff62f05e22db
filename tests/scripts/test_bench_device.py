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
    phases = fed["last_round"]["phase_seconds"]
    assert set(phases) == {"train", "aggregate", "evaluate"} and min(phases.values()) > 0
    assert sum(phases.values()) < fed["last_round"]["seconds"]
    cache = result["site_cache"]
    assert cache["files"] == 24 and "DICOM, RLE Lossless" in cache["source"]
    assert cache["first_epoch"]["load_seconds"] > cache["next_process"]["load_seconds"] > 0
    assert cache["later_over_first"] == pytest.approx(
        (cache["train_images"] / cache["later_epoch"]["epoch_seconds"])
        / cache["first_epoch"]["images_per_s"]
    )


def test_encrypted_diagnosis_is_timed_on_the_gpu_and_the_cpu_in_one_run():
    from scripts.bench_device_encrypted import devices_to_time
    from scripts.results_device import device as render

    cpu = torch.device("cpu")
    assert devices_to_time(cpu) == [cpu]
    assert devices_to_time(torch.device("cuda", 1)) == [torch.device("cuda", 1), cpu]
    assert devices_to_time(torch.device("mps")) == [cpu]  # CrypTen has no MPS path
    figures = {"batch1_seconds_per_image": 0.5, "batch32_seconds_per_image": 0.1}
    on_cpu = {"batch1_seconds_per_image": 1.25, "batch32_seconds_per_image": 0.375}
    result = {
        "machine": {"cores": 16, "torch": "2.x"},
        "device": {"device": "cuda"},
        "workload": {"batch": 8, "timed_steps": 3, "warmup_steps": 1, "precision": "fp32"},
        "models": {},
        "encrypted": {
            "model": "small_cnn",
            "input_shape": [1, 28, 28],
            "transport": "plain",
            "parties_device": "cuda",
            **figures,
            "by_device": {"cuda": figures, "cpu": on_cpu},
        },
    }
    result["workload"]["data"] = ""
    text = render(result)
    assert "plain, parties on the cuda): 0.50 s per image at batch 1, 0.10 at batch 32." in text
    assert "Both parties on the cpu in the same run: 1.25 and 0.38." in text
