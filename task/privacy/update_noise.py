"""Central DP at the site: clip the model update, add this site's share of the noise.

The site sends ``global + clip(update) + noise`` through secure aggregation, so the server
only ever sees the sum, whose noise is the sum of the sites' shares.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from task.privacy.dpsgd import secret_generator


def clip_and_noise(
    model: nn.Module,
    global_state: dict[str, torch.Tensor],
    *,
    clip_norm: float,
    noise_std: float,
    generator: torch.Generator | None = None,
) -> float:
    """Replace ``model``'s weights by ``global + clip(model - global) + N(0, noise_std²)``.

    The update is clipped to L2 norm ``clip_norm`` over all tensors together. Returns the
    update's norm before clipping. Models with buffers (BatchNorm statistics) are refused:
    buffers would carry unclipped, un-noised information about the data.
    """
    state = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    extra = sorted(set(state) - params)
    if extra:
        raise ValueError(
            f"central DP needs a model without buffers (make it DP-compatible); found {extra}"
        )
    gen = generator if generator is not None else secret_generator()
    # In float64 on the CPU, where the generator draws, whatever device trained the model;
    # load_state_dict copies the result back to it.
    base = {k: global_state[k].cpu().double() for k in params}
    deltas = {k: state[k].detach().cpu().double() - base[k] for k in params}
    norm = math.sqrt(sum(float(d.pow(2).sum()) for d in deltas.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    noisy = {}
    for key, delta in deltas.items():
        noise = torch.normal(0.0, noise_std, size=delta.shape, generator=gen, dtype=torch.float64)
        value = base[key] + delta * scale + noise
        noisy[key] = value.to(state[key].dtype)
    model.load_state_dict(noisy)
    return norm
