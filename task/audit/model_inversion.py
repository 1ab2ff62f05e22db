"""Model inversion of a trained classifier: what does the model "think" a class looks like?

Class-representative reconstruction (Fredrikson et al., 2015): optimise an input so that
the model assigns it to the class, with total-variation and L2 priors, then compare it
with the nearest training image of that class. A model that memorised a patient would
return something close to that patient's image.
"""

from __future__ import annotations

import torch
from torch import nn

from task.audit.inversion import random_start, total_variation
from task.audit.scores import pairwise_ssim
from task.runtime.device import model_device


def class_representative(
    model: nn.Module,
    target_class: int,
    shape: tuple[int, ...],
    bounds: tuple[float, float],
    *,
    steps: int = 300,
    lr: float = 0.05,
    tv_weight: float = 0.05,
    l2_weight: float = 1e-3,
    seed: int = 0,
) -> torch.Tensor:
    """One input of ``shape`` (1, C, H, W) that the model assigns to ``target_class``."""
    model.eval()
    lo, hi = bounds
    device = model_device(model)
    x = random_start(shape, bounds, torch.Generator().manual_seed(seed), device)
    opt = torch.optim.Adam([x], lr=lr)
    target = torch.full((shape[0],), target_class, dtype=torch.long, device=device)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        loss = loss + tv_weight * total_variation(x) + l2_weight * x.pow(2).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    return x.detach()


def nearest_image(recon: torch.Tensor, images: torch.Tensor, chunk: int = 512) -> tuple[int, float]:
    """Index and SSIM of the image in ``images`` (N, C, H, W; [0, 1]) closest to ``recon``."""
    best_i, best_s = -1, -float("inf")
    for start in range(0, len(images), chunk):
        s = pairwise_ssim(recon, images[start : start + chunk])[0]
        i = int(s.argmax())
        if s[i] > best_s:
            best_i, best_s = start + i, float(s[i])
    return best_i, best_s
