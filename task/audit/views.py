"""What the server sees of a site's images after one local step, in each setting.

Every view is the model update of one local SGD step divided by its learning rate, i.e. a
gradient the server can compute from the weights it receives (``(w_global - w_site) / lr``):

* ``plain``: one site's update, as a server without secure aggregation sees it;
* ``dp``: the same step under local DP-SGD (Opacus: per-example clipping and Gaussian noise
  at the σ a site would use for its ε);
* ``secure``: only the example-weighted mean of ``k`` sites' updates, as our secure
  aggregation server sees it, when every site's round is one step (``local_steps=1``);
* ``secure_round``: the same mean when every site trains its round as the federation does,
  a local epoch over its images, here with plain SGD so that the update stays as close to a
  gradient (the attacker's model of it) as multi-step training allows;
* ``malicious_server``: the secure sum of a round in which the server sent the sites
  different models, the target's update isolated from it (:mod:`task.audit.malicious_server`).

The victim's step is computed with dropout off and BatchNorm in inference mode, so the
attacker can replay it exactly: the strongest attacker, an upper bound on leakage.
"""

from __future__ import annotations

import copy

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def plain_update(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy on one batch (one plain SGD step)."""
    model.eval()
    loss = nn.functional.cross_entropy(model(images), labels)
    return [g.detach() for g in torch.autograd.grad(loss, _params(model))]


def _example_weighted_mean(
    sites: list[tuple[torch.Tensor, torch.Tensor]], per_site: list[list[torch.Tensor]]
) -> list[torch.Tensor]:
    """The mean of the sites' gradients weighted by their example counts: what a secure
    aggregation server learns of them."""
    total = sum(len(y) for _, y in sites)
    weights = [len(y) / total for _, y in sites]
    return [
        sum(w * g for w, g in zip(weights, parts, strict=True))
        for parts in zip(*per_site, strict=True)
    ]


def secure_sum_update(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """The example-weighted mean of the sites' one-step updates: all the server learns."""
    return _example_weighted_mean(batches, [plain_update(model, x, y) for x, y in batches])


def _round_gradient(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int, lr: float
) -> list[torch.Tensor]:
    """One site's SGD pass over its images from ``model``, as ``(w_before - w_after) /
    (lr * steps)``: its average gradient to first order."""
    local = copy.deepcopy(model).eval()
    params = _params(local)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=lr)
    steps = 0
    for start in range(0, len(labels), batch_size):
        optimizer.zero_grad()
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        nn.functional.cross_entropy(local(x), y).backward()
        optimizer.step()
        steps += 1
    return [(b - p.detach()) / (lr * steps) for b, p in zip(before, params, strict=True)]


def round_update(
    model: nn.Module,
    sites: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    batch_size: int,
    lr: float,
) -> list[torch.Tensor]:
    """The mean of the sites' whole-round updates, as a gradient: each site takes one SGD
    pass over its images in batches of ``batch_size`` from the global model; the server
    learns the example-weighted mean of ``(w_global - w_site) / (lr * steps)``, the average
    gradient to first order.

    Plain SGD, dropout off and BatchNorm in inference mode: of the local optimisers, the one
    whose update an attacker can best read as a gradient (an upper bound on leakage).
    """
    return _example_weighted_mean(
        sites, [_round_gradient(model, x, y, batch_size, lr) for x, y in sites]
    )


def dp_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """One Opacus DP-SGD step on the batch (clipped per example, noised), as a gradient.

    Runs the real optimiser: SGD with learning rate 1 on a copy of the model, the update is
    the weight difference. The noise is drawn from ``generator`` (secret to the attacker).
    """
    victim = copy.deepcopy(model).train()  # Opacus refuses a model in eval mode
    before = [p.detach().clone() for p in _params(victim)]
    loader = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, loader = engine.make_private(
        module=victim,
        optimizer=torch.optim.SGD(_params(victim), lr=1.0),
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,  # the attacker's view of one known batch
        noise_generator=generator,
    )
    # Opacus records per-example activations only in training mode; dropout is switched
    # off by hand so that the attacker can replay the step (GroupNorm ignores the mode).
    private.train()
    for module in private.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    x, y = next(iter(loader))
    optimizer.zero_grad()
    nn.functional.cross_entropy(private(x), y).backward()
    optimizer.step()
    private.remove_hooks()
    return [b - p.detach() for b, p in zip(before, _params(victim), strict=True)]
