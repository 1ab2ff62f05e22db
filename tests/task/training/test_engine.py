"""The training loop's channels-last layout and bf16 autocast: faster on CPU, same form."""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet

from task.training.engine import train_epoch


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


def _train(
    channels_last: bool, bf16: bool = False, seen: list[torch.dtype] | None = None
) -> dict[str, torch.Tensor]:
    """Three SGD steps; ``seen`` collects the dtype of every convolution's output."""
    model = _model()
    if seen is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
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


def test_bf16_autocast_runs_the_forward_in_bf16_and_trains_float32_weights() -> None:
    start = _model().state_dict()
    seen_bf16: list[torch.dtype] = []
    after = _train(channels_last=True, bf16=True, seen=seen_bf16)
    # The convolutions ran in bfloat16 (bf16 was not ignored) ...
    assert seen_bf16 and set(seen_bf16) == {torch.bfloat16}
    # ... and the control: the same run without bf16 convolves in float32.
    seen_fp32: list[torch.dtype] = []
    fp32 = _train(channels_last=True, seen=seen_fp32)
    assert seen_fp32 and set(seen_fp32) == {torch.float32}
    assert all(v.dtype == start[k].dtype for k, v in after.items())  # nothing left in bf16
    assert not torch.equal(after["conv1.weight"], start["conv1.weight"])
    # bf16's rounding shows in the trained weights (a run that ignored bf16 would train
    # exactly the float32 weights: CPU training here is deterministic).
    assert not torch.equal(after["conv1.weight"], fp32["conv1.weight"])
    assert torch.equal(_train(channels_last=True)["conv1.weight"], fp32["conv1.weight"])
