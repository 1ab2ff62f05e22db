"""Each computing party's ``device``: refused by name where it cannot be used, passed to the
party process, and (``gpu``) a session with a party on CUDA agrees with plaintext."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from mpc.inference.device import CPU, check_transport, party_device
from mpc.inference.fidelity import plaintext_probabilities, probabilities
from mpc.inference.model import load_served
from scripts.bench_channels import run_session
from task.data.pneumoniamnist import load_npz, resolve_path
from task.data.preprocess import preprocess_array
from task.runtime.device import DeviceError

CUDA = torch.device("cuda")
NO_CUDA = not torch.cuda.is_available()


def test_a_device_crypten_cannot_use_is_refused_by_key() -> None:
    assert party_device("cpu", "client.device") == CPU
    assert party_device("auto", "client.device").type in ("cpu", "cuda")
    refusals = {
        "gpu": "client.device='gpu' is not one of",
        "mps": "client.device='mps': CrypTen computes on the CPU or CUDA only",
        None: "client.device is not set",
        "cuda:99": "client.device='cuda:99': ",
    }
    if NO_CUDA:
        refusals["cuda"] = "client.device='cuda': no CUDA GPU is visible"
    for spec, message in refusals.items():
        with pytest.raises(DeviceError, match=message):
            party_device(spec, "client.device")


def test_gloo_carries_only_cpu_parties() -> None:
    check_transport("gloo", CPU)
    check_transport("plain", CUDA)
    check_transport("tls", CUDA)
    with pytest.raises(ValueError, match="transport 'gloo' carries CPU tensors only"):
        check_transport("gloo", CUDA)


def _session(checkpoint, devices: tuple[torch.device, torch.device], n: int = 6) -> None:
    """Both parties over the plain links (batches of 4 and 2) on ``devices``; the data
    owner's outputs agree with the plaintext model's, and come back on the CPU."""
    config = load_served(checkpoint).config
    images, _ = load_npz(resolve_path(None))["test"]
    images = preprocess_array(images[:n], instantiate(config["preprocess"]))
    result = run_session(checkpoint, images, 4, "plain", {}, devices)
    assert result["device"] == str(devices[1])
    assert isinstance(result["logits"], np.ndarray) and result["logits"].shape == (n, 2)
    encrypted = probabilities(result["logits"])
    plain = plaintext_probabilities(load_served(checkpoint).model, images)
    assert np.array_equal(encrypted.argmax(1), plain.argmax(1))
    assert np.abs(encrypted - plain).max() < 0.01


def test_parties_on_the_cpu_agree_with_plaintext(trained_checkpoint) -> None:
    _session(trained_checkpoint, (CPU, CPU))


@pytest.mark.gpu
def test_parties_on_cuda_agree_with_plaintext(trained_checkpoint) -> None:
    _session(trained_checkpoint, (CUDA, CUDA))


@pytest.mark.gpu
@pytest.mark.parametrize("devices", [(CUDA, CPU), (CPU, CUDA)], ids=["owner-cuda", "data-cuda"])
def test_a_cuda_party_and_a_cpu_party_agree_with_plaintext(trained_checkpoint, devices) -> None:
    _session(trained_checkpoint, devices)


@pytest.mark.gpu
def test_gloo_refuses_a_cuda_party(trained_checkpoint) -> None:
    from mpc.inference.process import PartyError

    config = load_served(trained_checkpoint).config
    images = np.zeros((1, *[int(config[k]) for k in ("channels", "resolution", "resolution")]))
    with pytest.raises(PartyError, match="transport 'gloo' carries CPU tensors only"):
        run_session(trained_checkpoint, images.astype(np.float32), 1, "gloo", {}, (CUDA, CUDA))
