"""Gradient inversion: recover a batch of images from the update a server sees.

* Inverting Gradients (Geiping et al., 2020): minimise ``1 - cos(∇θ L(x, y), g)`` plus a
  total-variation prior over images ``x``, with Adam on the sign of the gradient, a step
  decay and the images kept in the data's range.
* DLG (Zhu et al., 2019), the simpler baseline: minimise ``||∇θ L(x, y) - g||²`` with
  L-BFGS.

Labels are given to the attacker (the strong attacker of the issue; iDLG shows they can be
read off the last layer's gradient at batch 1). The attacks run on the model's device, in
float32: gradient matching compares gradients far finer than 16-bit rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from task.runtime.device import model_device


@dataclass(frozen=True)
class AttackSettings:
    """Inverting Gradients' knobs (defaults tuned for 28 px grayscale images on CPU)."""

    steps: int = 400
    lr: float = 0.1
    tv_weight: float = 1e-2
    restarts: int = 1
    seed: int = 0


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (the image prior)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def random_start(
    shape: tuple[int, ...],
    bounds: tuple[float, float],
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Uniform noise images in the data's range, to be optimised (requires grad), on
    ``device``. Drawn on the CPU whatever the device: the same seed starts the same images."""
    lo, hi = bounds
    x = torch.rand(shape, generator=generator) * (hi - lo) + lo
    return x.to(device).requires_grad_(True)


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _model_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, params, create_graph=True))


def inverting_gradients(
    model: nn.Module,
    target: list[torch.Tensor],
    labels: torch.Tensor,
    shape: tuple[int, ...],
    bounds: tuple[float, float],
    settings: AttackSettings = AttackSettings(),
) -> torch.Tensor:
    """Images of ``shape`` whose gradient matches ``target`` in direction (best restart)."""
    model.eval()
    g_target = _flat(target).detach()
    lo, hi = bounds
    best, best_loss = None, float("inf")
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.restarts):
        x = random_start(shape, bounds, gen, model_device(model))
        opt = torch.optim.Adam([x], lr=settings.lr)
        milestones = [int(settings.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        for _ in range(settings.steps):
            opt.zero_grad()
            g = _flat(_model_grads(model, x, labels))
            cos = nn.functional.cosine_similarity(g, g_target, dim=0, eps=1e-12)
            loss = 1 - cos + settings.tv_weight * total_variation(x)
            loss.backward()
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        final = 1 - nn.functional.cosine_similarity(
            _flat(_model_grads(model, x, labels)).detach(), g_target, dim=0, eps=1e-12
        )
        if float(final) < best_loss:
            best, best_loss = x.detach().clone(), float(final)
    return best


def dlg(
    model: nn.Module,
    target: list[torch.Tensor],
    labels: torch.Tensor,
    shape: tuple[int, ...],
    bounds: tuple[float, float],
    steps: int = 100,
    seed: int = 0,
) -> torch.Tensor:
    """Deep Leakage from Gradients: L2 gradient matching with L-BFGS."""
    model.eval()
    lo, hi = bounds
    x = random_start(shape, bounds, torch.Generator().manual_seed(seed), model_device(model))
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=20, history_size=20)
    g_target = _flat(target).detach()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (_flat(_model_grads(model, x, labels)) - g_target).pow(2).sum()
        loss.backward()
        return loss

    for _ in range(max(1, steps // 20)):
        opt.step(closure)
        with torch.no_grad():
            x.nan_to_num_(0.0).clamp_(lo, hi)
    return x.detach()
