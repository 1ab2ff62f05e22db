"""The audit: every attacker view and batch size, then model inversion (Flower-free).

Used by ``python -m scripts.audit``; returns what ``audit.json`` holds and writes the PNG
grids. Images are taken from the published training split (a site's data); the victim
model is the federation's initial global model (round 1), the most common target of
gradient inversion. The ``malicious_server`` view runs at batch 1 only, twice: with the
sites' checks against an active server off, then on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig
from torch import nn

from task.audit import views
from task.audit.inversion import AttackSettings, dlg, inverting_gradients
from task.audit.malicious_server import inconsistent_round
from task.audit.model_inversion import class_representative, nearest_image
from task.audit.report import save_grid
from task.audit.scores import prior_ssim, score
from task.config import compose_config
from task.data.sites import partition_site
from task.federation.calibration import class_has_calibration
from task.models.factory import build_model
from task.privacy import LocalDP
from task.privacy.dpsgd import secret_generator
from task.privacy.ledger import plan_round
from task.runtime import checkpoint

log = logging.getLogger(__name__)

VIEWS = ("plain", "dp", "secure", "secure_round", "malicious_server")
#: The batch size of the model-inconsistency attack (one image per step); the
#: ``malicious_server`` view runs at this size only.
MALICIOUS_BATCH = 1


def verdict(ssim: float, prior: float, recovered_margin: float, margin: float) -> str:
    """A plain-language reading of one score against the average image's (``prior``)."""
    if ssim - prior >= recovered_margin:
        return "images recovered: recognisably the patients' images, not a generic X-ray"
    if ssim - prior >= margin:
        return "partial leak: closer to the patients' images than the average X-ray"
    return "nothing recovered beyond what the average X-ray already shows"


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


def _to_unit(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return (x * std + mean).clamp(0, 1)


def run_audit(cfg: DictConfig, run_dir: Path, model_option: str) -> dict[str, Any]:
    """Run every configured attack; write grids into ``run_dir``; return the results."""
    a = cfg.audit
    unknown = set(a.views) - set(VIEWS)
    if unknown:
        raise ValueError(f"audit.views has {sorted(unknown)}; choose from {list(VIEWS)}")
    k, per_site = int(a.secure_sites), int(a.round_images)
    for b in a.batch_sizes:  # before any attack runs
        if per_site % int(b):
            raise ValueError(f"audit.round_images={per_site} is not a multiple of batch {b}")
    set_determinism(seed=cfg.seed)
    data = instantiate(cfg.data).load(preprocess=instantiate(cfg.transforms.preprocess))
    mean, std = float(cfg.transforms.norm_mean), float(cfg.transforms.norm_std)
    bounds = ((0.0 - mean) / std, (1.0 - mean) / std)
    n_classes = len(data.classes)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.in_shape, n_classes)
    torch.manual_seed(cfg.seed)
    dp_model = build_model(cfg.model, data.in_shape, n_classes, dp_compatible=True)
    sigma = federation_sigma(a.dp)
    settings: AttackSettings = instantiate(a.attack)
    rng = np.random.default_rng(cfg.seed)
    images = torch.from_numpy(data.train.images)
    labels = torch.from_numpy(data.train.labels).long()
    mean_image = _to_unit(images.mean(dim=0, keepdim=True), mean, std)
    entries: list[dict[str, Any]] = []
    for b in a.batch_sizes:
        picks = rng.choice(len(images), size=per_site * k, replace=False)
        # Each site's round images; its first batch is what one-step views train on.
        rounds = [
            (
                images[picks[i * per_site : (i + 1) * per_site]],
                labels[picks[i * per_site : (i + 1) * per_site]],
            )
            for i in range(k)
        ]
        batches = [(xs[:b], ys[:b]) for xs, ys in rounds]
        x, y = batches[0]  # the target site's batch
        for view in a.views:
            if view == "malicious_server":
                if int(b) == MALICIOUS_BATCH:
                    entries += _malicious_server(
                        model,
                        batches,
                        settings,
                        bounds,
                        prior=prior_ssim(mean_image, _to_unit(x, mean, std)),
                        unit=lambda t: _to_unit(t, mean, std),
                        run_dir=run_dir,
                        margins=(float(a.recovered_margin), float(a.margin)),
                    )
                else:
                    log.info("malicious_server runs at batch %d only: skipped", MALICIOUS_BATCH)
                continue
            victim = dp_model if view == "dp" else model
            summed = view in ("secure", "secure_round")
            if view == "plain":
                target = views.plain_update(victim, x, y)
            elif view == "dp":
                target = views.dp_update(
                    victim,
                    x,
                    y,
                    noise_multiplier=sigma,
                    max_grad_norm=float(a.dp.max_grad_norm),
                    generator=secret_generator(),
                )
            elif view == "secure":
                target = views.secure_sum_update(victim, batches)
            else:
                target = views.round_update(victim, rounds, batch_size=int(b), lr=float(a.round_lr))
            # Against a sum, the strongest attacker reconstructs every site's images (it
            # knows all labels) and keeps the best matches to the target site's images:
            # one batch per site, scored against the target site's first batch (for the
            # round view, against all the images the target site trained on that round).
            ax, ay = (
                (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
                if summed
                else (x, y)
            )
            if view == "secure_round":
                truth = _to_unit(rounds[0][0], mean, std)
            else:
                truth = _to_unit(x, mean, std)
            attacks = ["inverting_gradients"] + (["dlg"] if view == "plain" else [])
            for attack in attacks:
                t0 = time.perf_counter()
                if attack == "dlg":
                    recon = dlg(victim, target, ay, tuple(ax.shape), bounds, a.dlg_steps, cfg.seed)
                else:
                    recon = inverting_gradients(
                        victim, target, ay, tuple(ax.shape), bounds, settings
                    )
                seconds = time.perf_counter() - t0
                s = score(_to_unit(recon, mean, std), truth)
                s["prior_ssim"] = prior_ssim(mean_image, truth)
                grid = save_grid(
                    truth,
                    _to_unit(recon, mean, std),
                    run_dir / f"{view}_b{b}_{attack}.png",
                    title=f"{view}, batch {b}, {attack}: SSIM {s['ssim']:.2f}",
                )
                entry = {
                    "view": view,
                    "batch_size": int(b),
                    "attack": attack,
                    **s,
                    "seconds": seconds,
                    "verdict": verdict(
                        s["ssim"], s["prior_ssim"], float(a.recovered_margin), float(a.margin)
                    ),
                    "grid": grid.name,
                }
                if view == "dp":
                    entry |= {"noise_multiplier": sigma, "epsilon": float(a.dp.epsilon)}
                if summed:
                    entry["sites_in_sum"] = k
                if view == "secure_round":
                    entry["images_per_site"] = per_site
                log.info("%s", {k: v for k, v in entry.items() if k != "verdict"})
                entries.append(entry)
    return {
        "gradient_inversion": entries,
        "model_inversion": _model_inversion(cfg, run_dir, model_option, data, bounds, mean, std),
        "dp": {
            "epsilon": float(a.dp.epsilon),
            "delta": float(a.dp.delta),
            "noise_multiplier": sigma,
            "max_grad_norm": float(a.dp.max_grad_norm),
        },
    }


def _malicious_server(
    model, batches, settings, bounds, *, prior, unit, run_dir, margins
) -> list[dict[str, Any]]:
    """The model-inconsistency attack on the secure sum of ``batches`` (target first), the
    sites' checks against an active server off, then on: two entries. ``seconds`` is the
    inversion's time, ``round_seconds`` the protocol round's."""
    x, y = batches[0]
    truth = unit(x)
    out = []
    for checks in (False, True):
        t0 = time.perf_counter()
        got = inconsistent_round(model, batches, checks=checks)
        entry: dict[str, Any] = {
            "view": "malicious_server",
            "batch_size": len(y),
            "server_checks": "on" if checks else "off",
            "sites_in_sum": len(batches),
            "round_seconds": time.perf_counter() - t0,
            "masked_inputs_received": got.masked_inputs,
            "prior_ssim": prior,
        }
        if got.target is None:  # nothing to invert
            entry |= {
                "attack": None,
                **dict.fromkeys(("ssim", "psnr", "mse", "ssim_best_per_image"), None),
                "seconds": None,
                "refused_by": sorted(got.refusals),
                "verdict": got.outcome(),
                "grid": None,
            }
        else:
            t0 = time.perf_counter()
            recon = unit(
                inverting_gradients(model, got.target, y, tuple(x.shape), bounds, settings)
            )
            s = score(recon, truth)
            grid = save_grid(
                truth,
                recon,
                run_dir / f"malicious_server_checks_off_b{len(y)}.png",
                title=f"checks off: SSIM {s['ssim']:.2f}",
            )
            entry |= {
                "attack": "inverting_gradients",
                **s,
                "seconds": time.perf_counter() - t0,
                "verdict": verdict(s["ssim"], prior, *margins),
                "grid": grid.name,
            }
        log.info("%s", {k: v for k, v in entry.items() if k != "verdict"})
        out.append(entry)
    return out


def _trained_model(cfg: DictConfig, run_dir: Path, model_option: str) -> tuple[nn.Module, str]:
    """The model to invert: ``audit.model_inversion.checkpoint``, or a brief training."""
    mi = cfg.audit.model_inversion
    path = mi.checkpoint
    if path is None:
        from task.training.brief import brief_checkpoint

        path = brief_checkpoint(model_option, int(mi.brief_steps), run_dir / "brief_training")
    state = checkpoint.load(path)
    config = state.get("config") or {}
    model = instantiate(config.get("model", cfg.model))
    if config.get("dp_compatible"):
        from task.privacy.dpsgd import make_compatible

        model = make_compatible(model)
    model.load_state_dict(state["model"])
    return model.eval(), str(path)


def _model_inversion(cfg, run_dir, model_option, data, bounds, mean, std) -> list[dict[str, Any]]:
    mi = cfg.audit.model_inversion
    model, path = _trained_model(cfg, run_dir, model_option)
    train_unit = _to_unit(torch.from_numpy(data.train.images), mean, std)
    labels = data.train.labels
    out = []
    for k, name in enumerate(data.classes):
        t0 = time.perf_counter()
        recon = class_representative(
            model, k, (1, *data.in_shape), bounds, steps=int(mi.steps), seed=cfg.seed
        )
        recon_unit = _to_unit(recon, mean, std)
        own = np.flatnonzero(labels == k)
        i, _ = nearest_image(recon_unit, train_unit[own])
        nearest = train_unit[own[i] : own[i] + 1]
        s = score(recon_unit, nearest)
        s["prior_ssim"] = prior_ssim(train_unit[own].mean(dim=0, keepdim=True), nearest)
        grid = save_grid(
            nearest,
            recon_unit,
            run_dir / f"model_inversion_{name}.png",
            title=f"class {name}: nearest training image vs reconstruction, SSIM {s['ssim']:.2f}",
        )
        out.append(
            {
                "class": name,
                **s,
                "nearest_train_index": int(own[i]),
                "seconds": time.perf_counter() - t0,
                "checkpoint": path,
                "grid": grid.name,
                "verdict": verdict(
                    s["ssim"],
                    s["prior_ssim"],
                    float(cfg.audit.recovered_margin),
                    float(cfg.audit.margin),
                ),
            }
        )
    return out
