"""What a site does in one round, Flower-free: local training and local evaluation.

Every round is seeded from (run seed, round, site), so a round's local training is the same
whether the federation ran straight through or was resumed from a checkpoint.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig

from task.data.sites import Site
from task.data.splits import Split
from task.evaluation.metrics import clinical_metrics
from task.federation.calibration import has_calibration, site_moments
from task.federation.pooling import confusion_counts, score_histogram
from task.privacy import LocalDP, privacy_of
from task.privacy.dpsgd import secret_generator, train_private
from task.privacy.ledger import SiteLedger, plan_round
from task.privacy.update_noise import clip_and_noise
from task.runtime.device import configure_backends, loader_options, model_device
from task.training.engine import class_weights, mean_loss, predict, train_epoch

log = logging.getLogger(__name__)


def round_seed(seed: int, server_round: int, site_index: int) -> int:
    return (seed * 1_000_003 + server_round * 1_009 + site_index) % (2**31 - 1)


def round_lr(base_lr: float, server_round: int, num_rounds: int, schedule: str) -> float:
    """Learning rate of a round: ``constant`` or ``cosine`` decay over the rounds."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / num_rounds))
    raise ValueError(f"federation.lr_schedule={schedule!r} must be 'constant' or 'cosine'")


def uses_bf16(cfg: DictConfig) -> bool:
    """``train.precision``: ``fp32``, or ``bf16`` for the forward pass under CPU autocast."""
    precision = cfg.train.precision
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"train.precision={precision!r} must be 'fp32' or 'bf16'")
    return precision == "bf16"


@dataclass
class LocalResult:
    """Outcome of one round of local training.

    ``num_examples`` is the FedAvg weight: examples trained on; under local DP the
    expected number (a public function of the site's size, not the Poisson draw); under
    central DP 1 (site-level sensitivity needs weights that do not depend on the data).
    ``loss`` is the mean training loss, None under local DP: it is computed from the
    training examples without noise, and no mechanism in the site's ledger accounts for it,
    so the site does not send it. ``privacy`` is what the site reports in the clear under
    local DP (ε, σ, rounds left).
    """

    num_examples: int
    loss: float | None
    lr: float
    privacy: dict[str, float | int] | None = None


def local_train(
    model: torch.nn.Module,
    site: Site,
    cfg: DictConfig,
    server_round: int,
    *,
    proximal_mu: float = 0.0,
    ledger: SiteLedger | None = None,
) -> LocalResult:
    """Train the received global model on the site's data for the configured local work,
    on the device the model is on (the caller put it there: ``device``).

    ``federation.local_steps`` (batches, as PriMIA synchronised every few batches) takes
    precedence over ``federation.local_epochs``. The number of *examples* seen is returned,
    which FedAvg uses as the weight. With ``privacy=local_dp`` the round runs DP-SGD and is
    accounted in ``ledger`` (required), or raises :class:`BudgetExhausted` before any
    training; with ``privacy=central_dp`` the update is clipped and noised afterwards.
    """
    privacy = privacy_of(cfg)
    return _TRAINERS[privacy.name](model, site, cfg, server_round, privacy, proximal_mu, ledger)


def _train_plain(model, site, cfg, server_round, privacy, proximal_mu, ledger) -> LocalResult:
    """``privacy=none``: the round's local training as it is."""
    return _local_train_plain(model, site, cfg, server_round, proximal_mu)


def _train_local_dp(model, site, cfg, server_round, privacy, proximal_mu, ledger) -> LocalResult:
    """``privacy=local_dp``: DP-SGD, accounted in the site's ledger."""
    if ledger is None:
        raise ValueError("privacy=local_dp: local_train needs the site's privacy ledger")
    if proximal_mu:
        raise ValueError("privacy=local_dp does not support FedProx's proximal term")
    return _local_train_dp(model, site, cfg, server_round, privacy, ledger)


def _train_central_dp(model, site, cfg, server_round, privacy, proximal_mu, ledger):
    """``privacy=central_dp``: the update clipped and noised after training, with a weight
    of 1 (site-level sensitivity needs weights that do not depend on the data)."""
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = _local_train_plain(model, site, cfg, server_round, proximal_mu)
    clip_and_noise(
        model,
        global_state,
        clip_norm=privacy.clip_norm,
        noise_std=privacy.site_noise_std(int(cfg.federation.num_rounds)),
    )
    result.num_examples = 1
    return result


#: A site's round of local training under each privacy option, by the option's name.
_TRAINERS = {"none": _train_plain, "local_dp": _train_local_dp, "central_dp": _train_central_dp}


def _round_setup(model: torch.nn.Module, site: Site, cfg: DictConfig, server_round: int):
    """What every round's local training starts from, with or without DP: the round's seed,
    learning rate, optimiser, (class-weighted) loss and the shuffled, augmented loader."""
    fed = cfg.federation
    set_determinism(seed=round_seed(cfg.seed, server_round, site.index))
    configure_backends(model_device(model))  # after set_determinism, which turns it off
    lr = round_lr(cfg.optimizer.lr, server_round, fed.num_rounds, fed.lr_schedule)
    optimizer = instantiate(cfg.optimizer, lr=lr)(params=model.parameters())
    weight = class_weights(site.splits.train.labels, len(site.splits.classes))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight if cfg.train.class_weighted_loss else None)
    augment = instantiate(cfg.transforms.augment) if cfg.transforms.get("augment") else None
    feed = loader_options(model_device(model), cfg.train.get("num_workers", "auto"))
    loader = site.splits.train.loader(cfg.train.batch_size, shuffle=True, augment=augment, **feed)
    return lr, optimizer, loss_fn, loader


def _release_moments(model: torch.nn.Module, site: Site, privacy: LocalDP, *, sigma: float) -> None:
    """Set the model's feature moments from the site's training images, released with
    Gaussian noise ``sigma`` (the ledger has already accounted for the release)."""
    model.set_moments(
        *site_moments(
            model,
            site.splits.train.images,
            clip=privacy.calibration_clip,
            noise_multiplier=sigma,
            generator=secret_generator(),
        )
    )
    log.info(
        "site %s: feature moments released once with Gaussian noise σ=%.3f (clip %g·√F), "
        "accounted in the ledger",
        site.name,
        sigma,
        privacy.calibration_clip,
    )


def _local_train_dp(
    model: torch.nn.Module,
    site: Site,
    cfg: DictConfig,
    server_round: int,
    privacy: LocalDP,
    ledger: SiteLedger,
) -> LocalResult:
    fed, train = cfg.federation, site.splits.train
    with_moments = has_calibration(model)
    plan = plan_round(
        privacy,
        n_train=len(train),
        batch_size=int(cfg.train.batch_size),
        local_steps=fed.local_steps,
        local_epochs=int(fed.local_epochs),
        num_rounds=int(fed.num_rounds),
        calibration=with_moments,
    )
    # The moments' release, once (round 1): spent before the check, which then covers the
    # release and the round together.
    release = (
        privacy.calibration_history()[0] if with_moments and model.needs_calibration() else None
    )
    if release is not None:
        ledger.accountant.release(*release)
    ledger.check(plan)  # raises BudgetExhausted before touching the data
    if release is not None:
        _release_moments(model, site, privacy, sigma=release[0])
    lr, optimizer, loss_fn, loader = _round_setup(model, site, cfg, server_round)
    stats = train_private(
        model,
        loader,
        optimizer,
        loss_fn,
        steps=plan.steps,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=privacy.max_grad_norm,
        accountant=ledger.accountant,
    )
    ledger.save()
    report = ledger.report(plan)
    log.info(
        "site %s round %d: DP-SGD σ=%.4f, q=%.4f, %d steps; ε=%.3f at δ=%g",
        site.name,
        server_round,
        plan.noise_multiplier,
        plan.sample_rate,
        stats["steps"],
        report["epsilon"],
        privacy.delta,
    )
    expected = round(plan.steps * plan.sample_rate * len(train))
    # No loss: the noise-free mean training loss is no part of what the ledger accounts.
    return LocalResult(num_examples=expected, loss=None, lr=lr, privacy=report)


def _local_train_plain(
    model: torch.nn.Module, site: Site, cfg: DictConfig, server_round: int, proximal_mu: float
) -> LocalResult:
    fed = cfg.federation
    if has_calibration(model) and model.needs_calibration():  # exact: no DP to account
        model.set_moments(*site_moments(model, site.splits.train.images))
    lr, optimizer, loss_fn, loader = _round_setup(model, site, cfg, server_round)
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu else None
    # One local pass: the same loop, layout and precision for epochs and for local steps.
    run = partial(
        train_epoch,
        model,
        loader,
        optimizer,
        loss_fn,
        proximal_mu=proximal_mu,
        global_params=global_params,
        channels_last=True,
        bf16=uses_bf16(cfg),
    )
    if fed.local_steps:
        passes, remaining = [], int(fed.local_steps)
        while remaining > 0:
            passes.append(run(max_steps=remaining))
            remaining -= int(passes[-1]["steps"])
    else:
        passes = [run() for _ in range(int(fed.local_epochs))]
    total = sum(stats["num_examples"] for stats in passes)
    loss_sum = sum(stats["loss"] * stats["num_examples"] for stats in passes)
    return LocalResult(num_examples=total, loss=loss_sum / max(total, 1), lr=lr)


def intensity_moments(split: Split, norm_mean: float, norm_std: float) -> dict:
    """Mean and mean square of a site's image intensities before normalisation (undoing
    the configured ``(x - norm_mean) / norm_std``), per image, with the image count: the
    federation's mean and std follow from their example-weighted means."""
    raw = split.images.astype(np.float64) * norm_std + norm_mean
    per_image = raw.reshape(len(raw), -1)
    return {
        "num-examples": len(raw),
        "mean": float(per_image.mean(axis=1).mean()),
        "mean-sq": float((per_image**2).mean(axis=1).mean()),
    }


def local_evaluate(
    model: torch.nn.Module, split: Split, classes: tuple[str, ...], batch_size: int = 256
) -> dict:
    """Metrics of the global model on a local split, plus the counts the server can pool."""
    feed = loader_options(model_device(model), num_workers=0)  # one pass: pinning only
    probs, labels = predict(model, split.loader(batch_size, shuffle=False, **feed))
    m = clinical_metrics(labels, probs, classes, n_bootstrap=0)
    return {
        "num-examples": len(labels),
        "loss": mean_loss(probs, labels),
        "auc": m["auc"],
        "accuracy": m["accuracy"],
        "mcc": m["mcc"],
        "confusion": confusion_counts(labels, probs, len(classes)),
        "score-histogram": score_histogram(labels, probs, len(classes)),
    }


def weighted_average(states: list[dict[str, torch.Tensor]], weights: list[int]):
    """Example-weighted mean of state dicts (FedAvg), in a fixed order, as float64 sums."""
    total = float(sum(weights))
    out = {}
    for key in states[0]:
        acc = sum(s[key].double() * (w / total) for s, w in zip(states, weights, strict=True))
        out[key] = acc.to(states[0][key].dtype)
    return out
