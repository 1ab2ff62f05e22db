"""CrypTen 0.4.1 on torch 2.x: a MONAI network encrypted between two parties over TCP.

These tests check :mod:`mpc.crypten_compat` itself: that the patched CrypTen converts and
evaluates a MONAI network, and that ``get_plain_text(dst=...)`` returns the value to that
party alone. That the production parties of the diagnosis service reveal the logits to the
data owner alone (return values, and what the transport leaves in the model owner's
memory) is tested, with the production code and negative controls, in
``tests/mpc/inference/test_secrecy.py``.
"""

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


def _encrypted_forward(rank: int, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """One party: the model owner shares the model, the data owner the images. Returns
    what the reveal to the data owner gave this party, and (the control) what the same
    reveal made to all parties gave it."""
    from mpc.crypten_compat import crypten

    crypten.init()
    net = _network()
    model = crypten.nn.from_pytorch(net, torch.zeros(1, 1, 28, 28))
    model.encrypt(src=MODEL_OWNER)
    model.eval()
    x = crypten.cryptensor(
        images if rank == DATA_OWNER else torch.zeros_like(images), src=DATA_OWNER
    )
    y = model(x)
    out = {"to_data_owner": y.get_plain_text(dst=DATA_OWNER), "to_all": y.get_plain_text()}
    crypten.uninit()
    return out


def test_compat_patches_apply(monkeypatch) -> None:
    """CrypTen's converter runs the TorchScript exporter (``dynamo=False``). No negative
    control: without the patch torch picks the dynamo exporter, which here fails for an
    unrelated reason (``onnxscript`` is not installed) before CrypTen reads its graph."""
    import mpc.crypten_compat as compat

    assert "export-dynamo-false" in compat.check_patches()
    calls: list[dict] = []
    export = torch.onnx.export

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    compat.crypten.nn.from_pytorch(_network(), torch.zeros(1, 1, 28, 28))
    assert calls and all(c.get("dynamo") is False for c in calls), calls


def test_encrypted_monai_network_matches_plaintext() -> None:
    torch.manual_seed(1)
    images = torch.randn(5, 1, 28, 28)  # batch 5, converted with a batch-1 dummy input
    owner, data = run_local_parties(_encrypted_forward, 2, (images,), timeout=240)
    encrypted = data["to_data_owner"]
    # a reveal with dst reaches the data owner alone ...
    assert owner["to_data_owner"] is None
    # ... and the control: revealed to all, the model owner's process does receive it
    torch.testing.assert_close(owner["to_all"], encrypted, atol=0, rtol=0)
    plain = _network()(images).detach()
    err = (encrypted - plain).abs().max().item()
    print(f"max abs logit error, encrypted vs plaintext: {err:.2e}")
    assert torch.equal(encrypted.argmax(1), plain.argmax(1))
    assert err < 0.05
