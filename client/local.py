"""The site's work on its data: training, validation and intensity moments.

Imported by the ClientApp's handlers on their first train, evaluate or intensity message
only: torch, MONAI and the site's images cost seconds to import and load, and the key
stages of secure aggregation, each its own process in a deployment, need none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from omegaconf import DictConfig, OmegaConf

from client.run_config import composed, run_config, run_source
from task.config import with_normalisation
from task.constants import DECLINE_RECORD, NORM_MEAN, NORM_STD, SITE_RECORD
from task.data.sites import Site, load_site, site_state_dir
from task.federation.local_round import intensity_moments, local_evaluate, local_train
from task.federation.node import site_device
from task.models.factory import build_model
from task.privacy import BudgetExhausted, privacy_of
from task.privacy.ledger import SiteLedger
from task.privacy.settings import BUDGET_DECLINE
from task.runtime.device import prepare_model, resolve_device

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Do, once in the warm executor (:mod:`client.executor`), the lazy imports that each
    forked train process would otherwise repeat: a torch optimiser's first construction
    imports ``torch._dynamo`` and its dependencies, the largest part of a train process.
    No tensor work runs here, so no thread pool exists to be forked."""
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


@cache
def _prepared(
    source: tuple[tuple[str, ...], Path | None],
    normalisation: tuple[float, float] | None,
    node_items: tuple[tuple[str, Any], ...],
) -> tuple[DictConfig, Site, str]:
    """The config, the site and the model's YAML for one run's config source
    (:func:`client.run_config.run_source`), normalisation and node config, worked out on
    the first message and reused.

    Why: rendering the whole config to YAML (the key of :func:`task.data.sites.load_site`'s
    cache and of :func:`_network`'s) is paid on every message otherwise.
    """
    cfg = composed(*source)
    if normalisation is not None:
        cfg = with_normalisation(cfg, *normalisation)
    site = load_site(cfg, dict(node_items))
    return cfg, site, OmegaConf.to_yaml(cfg.model, resolve=True)


def _setup(msg: Message, context: Context, overrides: Sequence[str] | None):
    config = msg.content.config_records.get("config")
    normalisation = None
    if config is not None and NORM_MEAN in config:
        # The federation's own intensity statistics (federation.secure_normalisation).
        normalisation = (float(config[NORM_MEAN]), float(config[NORM_STD]))
    node_items = tuple(sorted(context.node_config.items()))
    cfg, site, model_yaml = _prepared(run_source(context, overrides), normalisation, node_items)
    dp_compatible = privacy_of(cfg).name != "none"
    shape, n_classes = site.splits.in_shape, len(site.splits.classes)
    if dp_compatible:  # Opacus leaves its marks on a module it wrapped: a fresh one each time
        model = build_model(cfg.model, shape, n_classes, dp_compatible=True)
    else:
        model = _network(model_yaml, shape, n_classes)
    prepare_model(model, resolve_device(*site_device(cfg, context.node_config)))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, site, model


@cache
def _network(model_yaml: str, in_shape: tuple[int, int, int], n_classes: int):
    """The site's network, built once per process and then only loaded with each message's
    weights and buffers (its whole state).

    Why: building it (instantiation, weight initialisation, the shape dry run) would run on
    every message; only the weights change between them.
    """
    return build_model(OmegaConf.create(model_yaml), in_shape, n_classes)


def _reply(
    msg: Message,
    site: Site,
    metrics: dict,
    arrays: ArrayRecord | None = None,
    public: dict | None = None,
):
    """The reply: metrics, the site's name and ``public`` facts (its ε under local DP) in
    the site record, which travels in the clear even under secure aggregation."""
    content = RecordDict(
        {
            "metrics": MetricRecord(metrics),
            SITE_RECORD: ConfigRecord({"name": site.name} | (public or {})),
        }
    )
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def _declined(msg: Message, site: Site, reason: str, detail: str) -> Message:
    """The reply of a site that declines the round: no update, no counts, its reason."""
    content = RecordDict(
        {
            DECLINE_RECORD: ConfigRecord({"reason": reason, "detail": detail}),
            SITE_RECORD: ConfigRecord({"name": site.name}),
        }
    )
    return Message(content=content, reply_to=msg)


def train(msg: Message, context: Context, overrides: Sequence[str] | None) -> Message:
    """Train on the site's split from the message's global model."""
    cfg, site, model = _setup(msg, context, overrides)
    config = msg.content["config"]
    privacy = privacy_of(cfg)
    ledger = (
        SiteLedger(privacy, site_state_dir(cfg, context.node_config), site.name)
        if privacy.site_accounting
        else None
    )
    try:
        result = local_train(
            model,
            site,
            cfg,
            int(config["server-round"]),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            ledger=ledger,
        )
    except BudgetExhausted as err:
        log.warning("%s", err)
        return _declined(msg, site, BUDGET_DECLINE, str(err))
    metrics = {"num-examples": result.num_examples, "lr": result.lr}
    if result.loss is not None:  # None under local DP: no mechanism accounts for it
        metrics["loss"] = result.loss
    return _reply(msg, site, metrics, ArrayRecord(model.state_dict()), result.privacy)


def intensity(msg: Message, context: Context, overrides: Sequence[str] | None) -> Message:
    """The site's intensity moments (federation.secure_normalisation)."""
    cfg = run_config(context, overrides)
    if privacy_of(cfg).name == "local_dp":  # no mechanism would account for them
        raise PermissionError(
            "privacy=local_dp: this site does not send its intensity moments without DP "
            "(federation.secure_normalisation)"
        )
    site = load_site(cfg, context.node_config)
    tr = cfg.transforms
    return _reply(msg, site, intensity_moments(site.splits.train, tr.norm_mean, tr.norm_std))


def evaluate(msg: Message, context: Context, overrides: Sequence[str] | None) -> Message:
    """Validate the message's model on the site's validation split."""
    cfg, site, model = _setup(msg, context, overrides)
    metrics = local_evaluate(model, site.splits.val, site.splits.classes, cfg.train.eval_batch_size)
    return _reply(msg, site, metrics)
