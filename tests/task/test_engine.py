"""The training loop's channels-last layout: faster on CPU, same training, same form."""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet

from task.engine import train_epoch


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ResNet(
        block="basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[8, 16, 32, 64],
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_size=3,
        conv1_t_stride=1,
        no_max_pool=True,
        num_classes=2,
    )


def _train(channels_last: bool, bf16: bool = False) -> dict[str, torch.Tensor]:
    model = _model()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 16, 16, generator=gen), torch.arange(8) % 2) for _ in range(3)]
    # SGD: an update proportional to the gradient (Adam's first steps are near sign(grad),
    # which turns rounding-level differences of near-zero gradients into lr-sized ones).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_epoch(
        model,
        batches,
        optimizer,
        torch.nn.CrossEntropyLoss(),
        channels_last=channels_last,
        bf16=bf16,
    )
    assert stats["steps"] == 3 and stats["num_examples"] == 24
    assert torch.isfinite(torch.tensor(stats["loss"]))
    return model.state_dict()


def test_channels_last_trains_the_same_weights_and_returns_the_default_layout() -> None:
    start = _model().state_dict()
    plain, fast = _train(channels_last=False), _train(channels_last=True)
    conv = "conv1.weight"
    assert not torch.equal(plain[conv], start[conv])  # it trained
    for key, value in fast.items():
        assert value.is_contiguous(), key  # what is saved or sent keeps the default layout
        torch.testing.assert_close(value, plain[key], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_trains_float32_weights() -> None:
    start = _model().state_dict()
    after = _train(channels_last=True, bf16=True)
    assert all(v.dtype == start[k].dtype for k, v in after.items())  # nothing left in bf16
    assert not torch.equal(after["conv1.weight"], start["conv1.weight"])
