"""The audit: every attacker view and batch size, then model inversion (Flower-free).

Used by ``python -m scripts.audit``; returns what ``audit.json`` holds and writes the PNG
grids. Images are taken from the published training split (a site's data); the victim
model is the federation's initial global model (round 1), the most common target of
gradient inversion. The ``malicious_server`` view runs at batch 1 only, twice: with the
sites' checks against an active server off, then on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig
from torch import nn

from task.audit import views
from task.audit.entries import (
    AuditSetup,
    gradient_entry,
    malicious_server_entries,
    model_inversion_entries,
    verdict,
)
from task.config import compose_config
from task.data.loading import load_data
from task.data.sites import partition_site
from task.federation.calibration import class_has_calibration
from task.models.factory import build_model
from task.privacy import LocalDP
from task.privacy.dpsgd import secret_generator
from task.privacy.ledger import plan_round
from task.runtime.device import configure_backends, resolve_device

# verdict moved to task.audit.entries; it stays importable from here.
__all__ = ["MALICIOUS_BATCH", "VIEWS", "federation_sigma", "run_audit", "verdict"]

log = logging.getLogger(__name__)

VIEWS = ("plain", "dp", "secure", "secure_round", "malicious_server")
#: The batch size of the model-inconsistency attack (one image per step); the
#: ``malicious_server`` view runs at this size only.
MALICIOUS_BATCH = 1

#: A site's round images and labels.
Batch = tuple[torch.Tensor, torch.Tensor]


def federation_sigma(dp: DictConfig) -> float:
    """σ a site of the default federation would use to spend ``dp.epsilon``."""
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    cfg = compose_config(["privacy=local_dp", f"privacy.epsilon={dp.epsilon}"])
    site = partition_site(cfg, 0, int(cfg.federation.num_sites))
    plan = plan_round(
        LocalDP(epsilon=float(dp.epsilon), delta=float(dp.delta)),
        n_train=len(site.splits.train),
        batch_size=int(cfg.train.batch_size),
        local_steps=cfg.federation.local_steps,
        local_epochs=int(cfg.federation.local_epochs),
        num_rounds=int(cfg.federation.num_rounds),
        calibration=class_has_calibration(str(cfg.model._target_)),
    )
    return plan.noise_multiplier


def run_audit(cfg: DictConfig, run_dir: Path, model_option: str) -> dict[str, Any]:
    """Run every configured attack; write grids into ``run_dir``; return the results."""
    a = cfg.audit
    _check(a)
    device = resolve_device(cfg.device)
    set_determinism(seed=cfg.seed)
    configure_backends(device)
    data = load_data(cfg.data, cfg.transforms.preprocess)
    victims = _victims(cfg, data)
    sigma = federation_sigma(a.dp)
    setup = AuditSetup(
        mean=float(cfg.transforms.norm_mean),
        std=float(cfg.transforms.norm_std),
        settings=instantiate(a.attack),
        dlg_steps=a.dlg_steps,
        seed=cfg.seed,
        run_dir=run_dir,
        margins=(float(a.recovered_margin), float(a.margin)),
        device=device,
    )
    rng = np.random.default_rng(cfg.seed)
    images = torch.from_numpy(data.train.images)
    labels = torch.from_numpy(data.train.labels).long()
    setup.prior_image = setup.unit(images.mean(dim=0, keepdim=True))
    entries: list[dict[str, Any]] = []
    for b in a.batch_sizes:
        rounds = _site_rounds(rng, images, labels, int(a.secure_sites), int(a.round_images))
        entries += _entries_at(setup, a, b, rounds, victims, sigma)
    return {
        "gradient_inversion": entries,
        "model_inversion": model_inversion_entries(setup, cfg, model_option, data),
        "dp": {
            "epsilon": float(a.dp.epsilon),
            "delta": float(a.dp.delta),
            "noise_multiplier": sigma,
            "max_grad_norm": float(a.dp.max_grad_norm),
        },
    }


def _check(a: DictConfig) -> None:
    """Refuse unknown views and batch sizes that do not split a round, before any attack."""
    unknown = set(a.views) - set(VIEWS)
    if unknown:
        raise ValueError(f"audit.views has {sorted(unknown)}; choose from {list(VIEWS)}")
    per_site = int(a.round_images)
    for b in a.batch_sizes:
        if per_site % int(b):
            raise ValueError(f"audit.round_images={per_site} is not a multiple of batch {b}")


def _victims(cfg: DictConfig, data) -> tuple[nn.Module, nn.Module]:
    """The federation's initial global model and its DP-compatible twin, from one seed."""
    n_classes = len(data.classes)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.in_shape, n_classes)
    torch.manual_seed(cfg.seed)
    dp_model = build_model(cfg.model, data.in_shape, n_classes, dp_compatible=True)
    return model, dp_model


def _site_rounds(
    rng: np.random.Generator, images: torch.Tensor, labels: torch.Tensor, k: int, per_site: int
) -> list[Batch]:
    """Each of ``k`` sites' round images, drawn without repeats across sites."""
    picks = rng.choice(len(images), size=per_site * k, replace=False)
    return [
        (
            images[picks[i * per_site : (i + 1) * per_site]],
            labels[picks[i * per_site : (i + 1) * per_site]],
        )
        for i in range(k)
    ]


def _entries_at(
    setup: AuditSetup,
    a: DictConfig,
    b: int,
    rounds: list[Batch],
    victims: tuple[nn.Module, nn.Module],
    sigma: float,
) -> list[dict[str, Any]]:
    """Every view's entries at batch size ``b``."""
    # Each site's first batch of its round images is what one-step views train on.
    batches = [(xs[:b], ys[:b]) for xs, ys in rounds]
    entries: list[dict[str, Any]] = []
    for view in a.views:
        if view != "malicious_server":
            entries += _view_entries(setup, a, view, b, rounds, batches, victims, sigma)
        elif int(b) == MALICIOUS_BATCH:
            entries += [_logged(e) for e in malicious_server_entries(setup, victims[0], batches)]
        else:
            log.info("malicious_server runs at batch %d only: skipped", MALICIOUS_BATCH)
    return entries


def _view_entries(
    setup: AuditSetup,
    a: DictConfig,
    view: str,
    b: int,
    rounds: list[Batch],
    batches: list[Batch],
    victims: tuple[nn.Module, nn.Module],
    sigma: float,
) -> list[dict[str, Any]]:
    """The update the server sees in ``view``, and each attack on it: one entry each."""
    x, y = batches[0]  # the target site's batch
    victim = victims[1] if view == "dp" else victims[0]
    target = _observed_update(view, victim, a, b, rounds, batches, sigma)
    # Against a sum, the strongest attacker reconstructs every site's images (it
    # knows all labels) and keeps the best matches to the target site's images:
    # one batch per site, scored against the target site's first batch (for the
    # round view, against all the images the target site trained on that round).
    summed = view in ("secure", "secure_round")
    images = (
        (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
        if summed
        else (x, y)
    )
    truth = setup.unit(rounds[0][0] if view == "secure_round" else x)
    extra = _view_facts(view, a, sigma)
    attacks = ["inverting_gradients"] + (["dlg"] if view == "plain" else [])
    return [
        _logged(gradient_entry(setup, view, b, attack, victim, target, images, truth, extra))
        for attack in attacks
    ]


def _observed_update(
    view: str,
    victim: nn.Module,
    a: DictConfig,
    b: int,
    rounds: list[Batch],
    batches: list[Batch],
    sigma: float,
) -> list[torch.Tensor]:
    """What the server observes of the target site in ``view``."""
    x, y = batches[0]
    if view == "plain":
        return views.plain_update(victim, x, y)
    if view == "dp":
        return views.dp_update(
            victim,
            x,
            y,
            noise_multiplier=sigma,
            max_grad_norm=float(a.dp.max_grad_norm),
            generator=secret_generator(),
        )
    if view == "secure":
        return views.secure_sum_update(victim, batches)
    return views.round_update(victim, rounds, batch_size=int(b), lr=float(a.round_lr))


def _view_facts(view: str, a: DictConfig, sigma: float) -> dict[str, Any]:
    """What an entry of ``view`` states besides its scores: the noise, or the sum's size."""
    if view == "dp":
        return {"noise_multiplier": sigma, "epsilon": float(a.dp.epsilon)}
    facts: dict[str, Any] = {}
    if view in ("secure", "secure_round"):
        facts["sites_in_sum"] = int(a.secure_sites)
    if view == "secure_round":
        facts["images_per_site"] = int(a.round_images)
    return facts


def _logged(entry: dict[str, Any]) -> dict[str, Any]:
    """Log an entry as it is made (the verdict is for the report) and pass it on."""
    log.info("%s", {k: v for k, v in entry.items() if k != "verdict"})
    return entry
