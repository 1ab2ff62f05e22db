"""CrypTen 0.4.1 on torch 2.x: a MONAI network encrypted between two parties over TCP."""

from __future__ import annotations

import torch

from mpc.parties import run_local_parties

MODEL_OWNER, DATA_OWNER = 0, 1


def _network() -> torch.nn.Module:
    from monai.networks.nets import Classifier

    torch.manual_seed(0)
    net = Classifier(
        in_shape=(1, 28, 28),
        classes=2,
        channels=(8, 16, 32),
        strides=(2, 2, 2),
        num_res_units=1,
        act="RELU",
        norm="BATCH",
    )
    # non-trivial BatchNorm statistics, as after training
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    return net.eval()


def _encrypted_forward(rank: int, images: torch.Tensor) -> torch.Tensor:
    """One party: the model owner shares the model, the data owner the images."""
    from mpc.crypten_compat import crypten

    crypten.init()
    net = _network()
    model = crypten.nn.from_pytorch(net, torch.zeros(1, 1, 28, 28))
    model.encrypt(src=MODEL_OWNER)
    model.eval()
    x = crypten.cryptensor(
        images if rank == DATA_OWNER else torch.zeros_like(images), src=DATA_OWNER
    )
    out = model(x).get_plain_text(dst=DATA_OWNER)
    crypten.uninit()
    return out if rank == DATA_OWNER else None


def test_compat_patches_apply() -> None:
    from mpc.crypten_compat import check_patches

    assert "export-dynamo-false" in check_patches()


def test_encrypted_monai_network_matches_plaintext() -> None:
    torch.manual_seed(1)
    images = torch.randn(5, 1, 28, 28)  # batch 5, converted with a batch-1 dummy input
    results = run_local_parties(_encrypted_forward, 2, (images,), timeout=240)
    assert results[MODEL_OWNER] is None  # only the data owner learns the output
    encrypted = results[DATA_OWNER]
    plain = _network()(images).detach()
    err = (encrypted - plain).abs().max().item()
    print(f"max abs logit error, encrypted vs plaintext: {err:.2e}")
    assert torch.equal(encrypted.argmax(1), plain.argmax(1))
    assert err < 0.05
