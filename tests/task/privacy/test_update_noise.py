"""Central DP at the site: the update is clipped, noised, and buffers are refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from task.privacy.update_noise import clip_and_noise


def _pair(scale: float) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Linear(50, 40)
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model, global_state


def _update_norm(model: nn.Module, global_state: dict) -> float:
    return math.sqrt(
        sum(
            float((v.double() - global_state[k].double()).pow(2).sum())
            for k, v in model.state_dict().items()
        )
    )


def test_large_update_is_clipped_to_the_bound() -> None:
    model, g = _pair(1.0)
    before = clip_and_noise(model, g, clip_norm=0.5, noise_std=0.0)
    assert before > 10
    assert _update_norm(model, g) == pytest.approx(0.5, rel=1e-5)


def test_small_update_is_kept() -> None:
    model, g = _pair(1e-4)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    clip_and_noise(model, g, clip_norm=10.0, noise_std=0.0)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6)


def test_noise_has_the_requested_spread() -> None:
    model, g = _pair(0.0)
    clip_and_noise(model, g, clip_norm=1.0, noise_std=0.3)
    diffs = torch.cat([(v - g[k]).reshape(-1) for k, v in model.state_dict().items()])
    assert diffs.numel() == 2040
    assert float(diffs.std()) == pytest.approx(0.3, rel=0.08)
    assert abs(float(diffs.mean())) < 0.03


def test_models_with_buffers_are_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    g = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"without buffers.*running_mean"):
        clip_and_noise(model, g, clip_norm=1.0, noise_std=0.1)
