"""One audit entry per attack (Flower-free): run it, time it, score the reconstruction
against the true images and against the average image (the prior), draw its grid, and read
the score in plain language. :mod:`task.audit.run` decides which attacks run on what."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from task.audit.inversion import AttackSettings, dlg, inverting_gradients
from task.audit.malicious_server import inconsistent_round
from task.audit.model_inversion import class_representative, nearest_image
from task.audit.report import save_grid
from task.audit.scores import prior_ssim, score
from task.runtime import checkpoint
from task.runtime.device import model_device


def verdict(ssim: float, prior: float, recovered_margin: float, margin: float) -> str:
    """A plain-language reading of one score against the average image's (``prior``)."""
    if ssim - prior >= recovered_margin:
        return "images recovered: recognisably the patients' images, not a generic X-ray"
    if ssim - prior >= margin:
        return "partial leak: closer to the patients' images than the average X-ray"
    return "nothing recovered beyond what the average X-ray already shows"


@dataclass
class AuditSetup:
    """What every attack of one audit shares: the attacker's knowledge of the images
    (normalisation, hence pixel bounds), its settings, and where results go."""

    mean: float
    std: float
    settings: AttackSettings
    dlg_steps: int
    seed: int
    run_dir: Path
    #: ``(audit.recovered_margin, audit.margin)``: the verdict's thresholds over the prior.
    margins: tuple[float, float]
    #: The average training image, on the [0, 1] scale: the prior a reconstruction must beat.
    prior_image: torch.Tensor | None = None
    #: Where the attacks optimise (``device``); scores, grids and the views stay on the CPU.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def bounds(self) -> tuple[float, float]:
        """The normalised values of black and white, which reconstructions are kept in."""
        return ((0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std)

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images back on the [0, 1] scale that scores and grids use."""
        return (x * self.std + self.mean).clamp(0, 1)

    def verdict(self, ssim: float, prior: float) -> str:
        """:func:`verdict` with this audit's margins."""
        return verdict(ssim, prior, *self.margins)

    def attacker(
        self, model: nn.Module, target: list[torch.Tensor], labels: torch.Tensor
    ) -> tuple[nn.Module, list[torch.Tensor], torch.Tensor]:
        """The attacked model, the observed update and the labels on :attr:`device`; on the
        CPU the same objects. A copy is moved, never the victim: the views that follow
        compute their updates from it on the CPU."""
        if model_device(model) == self.device:
            return model, target, labels
        moved = [g.to(self.device) for g in target]
        return copy.deepcopy(model).to(self.device), moved, labels.to(self.device)


def gradient_entry(
    setup: AuditSetup,
    view: str,
    b: int,
    attack: str,
    victim: nn.Module,
    target: list[torch.Tensor],
    images: tuple[torch.Tensor, torch.Tensor],
    truth: torch.Tensor,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Invert ``target``, the update the server sees in ``view`` at batch size ``b``, with
    ``attack``, knowing the labels of ``images`` (what it came from); score against
    ``truth``. ``extra`` ends the entry (the view's own facts)."""
    ax, ay = images
    t0 = time.perf_counter()
    model, target, ay = setup.attacker(victim, target, ay)
    if attack == "dlg":
        recon = dlg(model, target, ay, tuple(ax.shape), setup.bounds, setup.dlg_steps, setup.seed)
    else:
        recon = inverting_gradients(
            model, target, ay, tuple(ax.shape), setup.bounds, setup.settings
        )
    recon = recon.cpu()
    seconds = time.perf_counter() - t0
    s = score(setup.unit(recon), truth)
    s["prior_ssim"] = prior_ssim(setup.prior_image, truth)
    grid = save_grid(
        truth,
        setup.unit(recon),
        setup.run_dir / f"{view}_b{b}_{attack}.png",
        title=f"{view}, batch {b}, {attack}: SSIM {s['ssim']:.2f}",
    )
    return {
        "view": view,
        "batch_size": int(b),
        "attack": attack,
        **s,
        "seconds": seconds,
        "verdict": setup.verdict(s["ssim"], s["prior_ssim"]),
        "grid": grid.name,
        **extra,
    }


def malicious_server_entries(
    setup: AuditSetup, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> list[dict[str, Any]]:
    """The model-inconsistency attack on the secure sum of ``batches`` (target first), the
    sites' checks against an active server off, then on: two entries. ``seconds`` is the
    inversion's time, ``round_seconds`` the protocol round's."""
    x, y = batches[0]
    truth = setup.unit(x)
    prior = prior_ssim(setup.prior_image, truth)
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
            attacked, target, labels = setup.attacker(model, got.target, y)
            recon = setup.unit(
                inverting_gradients(
                    attacked, target, labels, tuple(x.shape), setup.bounds, setup.settings
                ).cpu()
            )
            s = score(recon, truth)
            grid = save_grid(
                truth,
                recon,
                setup.run_dir / f"malicious_server_checks_off_b{len(y)}.png",
                title=f"checks off: SSIM {s['ssim']:.2f}",
            )
            entry |= {
                "attack": "inverting_gradients",
                **s,
                "seconds": time.perf_counter() - t0,
                "verdict": setup.verdict(s["ssim"], prior),
                "grid": grid.name,
            }
        out.append(entry)
    return out


def trained_model(cfg: DictConfig, run_dir: Path, model_option: str) -> tuple[nn.Module, str]:
    """The model to invert: ``audit.model_inversion.checkpoint``, or a brief training."""
    mi = cfg.audit.model_inversion
    path = mi.checkpoint
    if path is None:
        from task.training.brief import brief_checkpoint

        path = brief_checkpoint(
            model_option, int(mi.brief_steps), run_dir / "brief_training", device=cfg.device
        )
    state = checkpoint.load(path)
    config = state.get("config") or {}
    model = instantiate(config.get("model", cfg.model))
    if config.get("dp_compatible"):
        from task.privacy.dpsgd import make_compatible

        model = make_compatible(model)
    model.load_state_dict(state["model"])
    return model.eval(), str(path)


def model_inversion_entries(
    setup: AuditSetup, cfg: DictConfig, model_option: str, data
) -> list[dict[str, Any]]:
    """One class-representative reconstruction per class of the trained model, scored
    against the nearest training image of that class and that class's average image."""
    mi = cfg.audit.model_inversion
    model, path = trained_model(cfg, setup.run_dir, model_option)
    model = model.to(setup.device)
    train_unit = setup.unit(torch.from_numpy(data.train.images))
    labels = data.train.labels
    out = []
    for k, name in enumerate(data.classes):
        t0 = time.perf_counter()
        recon = class_representative(
            model, k, (1, *data.in_shape), setup.bounds, steps=int(mi.steps), seed=cfg.seed
        )
        recon_unit = setup.unit(recon.cpu())
        own = np.flatnonzero(labels == k)
        i, _ = nearest_image(recon_unit, train_unit[own])
        nearest = train_unit[own[i] : own[i] + 1]
        s = score(recon_unit, nearest)
        s["prior_ssim"] = prior_ssim(train_unit[own].mean(dim=0, keepdim=True), nearest)
        grid = save_grid(
            nearest,
            recon_unit,
            setup.run_dir / f"model_inversion_{name}.png",
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
                "verdict": setup.verdict(s["ssim"], s["prior_ssim"]),
            }
        )
    return out
