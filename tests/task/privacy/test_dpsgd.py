"""Local DP-SGD: the model made compatible, every step accounted, noise not from the seed."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from task.config import compose_config
from task.models.factory import build_model
from task.privacy import Accountant, dpsgd
from task.privacy.dpsgd import check_per_example_gradients, steps_per_epoch, train_private


def test_batchnorm_becomes_groupnorm_and_the_log_says_so(caplog) -> None:
    cfg = compose_config(["model=small_cnn", "model.channels=[8,16,32,64]"])
    plain = build_model(cfg.model, (1, 28, 28), 2)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    with caplog.at_level(logging.INFO, logger="task.privacy.dpsgd"):
        model = build_model(cfg.model, (1, 28, 28), 2, dp_compatible=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert n_bn > 0
    assert f"{n_bn} BatchNorm layer(s) of Classifier replaced by GroupNorm" in caplog.text
    assert not list(model.buffers())  # nothing left that escapes clipping


def _data(n: int = 96) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)


def _run(
    accountant: Accountant, steps: int = 7, noise_multiplier: float = 1.2
) -> tuple[nn.Module, dict]:
    torch.manual_seed(0)  # the same "run seed" every time
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    stats = train_private(
        model,
        _data(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        steps=steps,
        noise_multiplier=noise_multiplier,
        max_grad_norm=1.0,
        accountant=accountant,
    )
    return model, stats


def test_every_step_is_accounted_in_the_given_ledger() -> None:
    acc = Accountant([(1.2, 1 / 6, 10)])  # ten steps from earlier rounds
    _, stats = _run(acc, steps=7)
    assert stats["steps"] == 7
    assert steps_per_epoch(96, 16) == 6
    assert acc.history == [(1.2, 1 / 6, 17)]  # continued, never restarted


@pytest.fixture
def fixed_sampling(monkeypatch) -> None:
    """Test hook: the batches come from the plain loader (shuffled from the run seed), not
    from Poisson sampling, which draws from the secret generator too. Then the noise is the
    only thing that can differ between two runs of the same seed."""
    monkeypatch.setattr(dpsgd, "poisson_loader", lambda loader, generator: loader)


def _two_runs_differ(noise_multiplier: float = 1.2) -> bool:
    a, _ = _run(Accountant(), noise_multiplier=noise_multiplier)
    b, _ = _run(Accountant(), noise_multiplier=noise_multiplier)
    return not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_noise_is_not_reproducible_from_the_run_seed(fixed_sampling) -> None:
    # Control: without noise, two runs of the same seed agree, so a difference below can
    # only come from the noise (not from the sampling, nor from anything else).
    assert not _two_runs_differ(noise_multiplier=0.0)
    assert _two_runs_differ()


def test_noise_drawn_from_the_run_seed_would_be_detected(fixed_sampling, monkeypatch) -> None:
    """Negative control of the test above: with the noise's generator seeded from the run
    seed (the leak), two runs agree and its check fails."""
    monkeypatch.setattr(
        dpsgd, "secret_generator", lambda: torch.Generator().manual_seed(torch.initial_seed())
    )
    assert not _two_runs_differ()


def test_a_network_opacus_cannot_train_is_refused_by_name_and_dp_cnn_passes() -> None:
    """MONAI's ResNet adds its shortcut in place on a hooked layer's output: per-example
    gradients fail on it, so the check refuses it before any round; dp_cnn trains."""
    resnet_cfg = compose_config(["model=small_resnet_s2"])
    resnet = build_model(resnet_cfg.model, (1, 28, 28), 2, dp_compatible=True)
    with pytest.raises(ValueError, match="ResNet cannot be trained with local DP-SGD"):
        check_per_example_gradients(resnet, (1, 28, 28))
    cfg = compose_config(["model=dp_cnn"])
    model = build_model(cfg.model, (1, 28, 28), 2, dp_compatible=True)
    before = [p.detach().clone() for p in model.parameters()]
    check_per_example_gradients(model, (1, 28, 28))
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())  # the trial ran on a copy


def _one_step_norm(max_grad_norm: float) -> float:
    """The update of one noise-free DP-SGD step at lr 1 on a fixed batch of 16: Opacus adds
    the clipped per-example gradients and divides by the expected batch size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    train_private(
        model,
        _data(16),
        torch.optim.SGD(model.parameters(), lr=1.0),
        nn.CrossEntropyLoss(),
        steps=1,
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        accountant=Accountant(),
    )
    pairs = zip(model.parameters(), before, strict=True)
    return float(torch.sqrt(sum(((p - b) ** 2).sum() for p, b in pairs)))


def test_each_examples_gradient_is_clipped(fixed_sampling) -> None:
    """With per-example gradients clipped to C, one step at lr 1 moves the weights by at
    most C (a mean of vectors of norm <= C). The control, C = 1e6 (no clipping in effect),
    moves them by far more, so the bound is the clipping's doing."""
    clip = 1e-3
    assert _one_step_norm(clip) <= clip * (1 + 1e-6)
    assert _one_step_norm(1e6) > 100 * clip
