"""Flower ClientApp: a thin adapter over the Flower-free site loops in ``task/``.

With ``secure=smpc`` the replies leave the site only masked (:mod:`client.secure`). Every
reply, masked or not, error or not, is first appended to the site's audit log
(:mod:`client.site_log`), the outermost mod of every handler.

Records in (global arrays, round config), one engine call, records out (arrays, metrics
with the true number of examples, the site's name). An exception in a handler becomes an
error reply, which the strategy counts and skips.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import DictConfig, OmegaConf

from client.policy import DEFAULT, SitePolicy, make_policy_mod
from client.secure import make_secure
from client.site_log import make_site_log_mod
from task.config import compose_config, overrides_from_run_config, with_normalisation
from task.constants import NORM_MEAN, NORM_STD, SITE_RECORD
from task.federated import intensity_moments, local_evaluate, local_train
from task.models import build_model
from task.privacy import BudgetExhausted, LocalDP, privacy_of
from task.privacy.ledger import SiteLedger
from task.sites import Site, load_site, site_state_dir

log = logging.getLogger(__name__)


@cache
def _config(overrides: tuple[str, ...]):
    return compose_config(overrides)


def _overrides(context: Context, overrides: Sequence[str] | None) -> tuple[str, ...]:
    """The app's overrides, or (deployment) those of the run config."""
    if overrides is None:
        overrides = overrides_from_run_config(context.run_config)
    return tuple(overrides)


def _cfg(context: Context, overrides: Sequence[str] | None):
    return _config(_overrides(context, overrides))


@cache
def _prepared(
    overrides: tuple[str, ...],
    normalisation: tuple[float, float] | None,
    node_items: tuple[tuple[str, Any], ...],
) -> tuple[DictConfig, Site, str]:
    """The config, the site and the model's YAML for one run's overrides, normalisation
    and node config, worked out on the first message and reused.

    Why: rendering the whole config to YAML (the key of :func:`task.sites.load_site`'s
    cache and of :func:`_network`'s) cost about 10 ms a message, six messages a round.
    """
    cfg = _config(overrides)
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
    cfg, site, model_yaml = _prepared(_overrides(context, overrides), normalisation, node_items)
    dp_compatible = privacy_of(cfg).name != "none"
    shape, n_classes = site.splits.in_shape, len(site.splits.classes)
    if dp_compatible:  # Opacus leaves its marks on a module it wrapped: a fresh one each time
        model = build_model(cfg.model, shape, n_classes, dp_compatible=True)
    else:
        model = _network(model_yaml, shape, n_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, site, model


@cache
def _network(model_yaml: str, in_shape: tuple[int, int, int], n_classes: int):
    """The site's network, built once per process and then only loaded with each message's
    weights and buffers (its whole state).

    Why: building it (instantiation, weight initialisation, the shape dry run) ran six times
    a round in a simulation; reusing it took the default's 36 plaintext rounds from 122.6 s
    to 118.7 s (about 20 ms a message).
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


def make_client_app(
    overrides: Sequence[str] | None = None, default_policy: SitePolicy | None = None
) -> ClientApp:
    """A ClientApp; ``overrides=None`` reads them from the run config (deployment).

    ``default_policy``: the site policy of a node whose config names no ``site-policy``
    file; by default :data:`client.policy.DEFAULT` in a deployment (the coordinator's run
    config cannot loosen it) and :meth:`SitePolicy.lab` where the caller gives the
    overrides (a simulation's sites belong to whoever runs it).
    """
    if default_policy is None:
        default_policy = DEFAULT if overrides is None else SitePolicy.lab()

    def get_cfg(context: Context):
        return _cfg(context, overrides)

    # The app's own mods wrap every handler's mods (Flower: first in the list = outermost),
    # so the log records each reply as it leaves: after masking, key stages included. The
    # site's policy is checked next, before any handler touches data or keys.
    app = ClientApp(mods=[make_site_log_mod(get_cfg), make_policy_mod(get_cfg, default_policy)])
    # Secure aggregation (secure=smpc): key stages as queries, masking as a mod.
    secure_query, secure_mod = make_secure(get_cfg, default_policy)
    app.query("secagg")(secure_query)

    @app.train(mods=[secure_mod])
    def train(msg: Message, context: Context) -> Message:
        cfg, site, model = _setup(msg, context, overrides)
        config = msg.content["config"]
        privacy = privacy_of(cfg)
        ledger = (
            SiteLedger(privacy, site_state_dir(cfg, context.node_config), site.name)
            if isinstance(privacy, LocalDP)
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
            log.warning("%s", err)  # the error reply carries the same words to the server
            raise
        metrics = {"num-examples": result.num_examples, "lr": result.lr}
        if result.loss is not None:  # None under local DP: no mechanism accounts for it
            metrics["loss"] = result.loss
        return _reply(msg, site, metrics, ArrayRecord(model.state_dict()), result.privacy)

    @app.query("intensity", mods=[secure_mod])
    def intensity(msg: Message, context: Context) -> Message:
        cfg = _cfg(context, overrides)
        if privacy_of(cfg).name == "local_dp":  # no mechanism would account for them
            raise PermissionError(
                "privacy=local_dp: this site does not send its intensity moments without DP "
                "(federation.secure_normalisation)"
            )
        site = load_site(cfg, context.node_config)
        tr = cfg.transforms
        return _reply(msg, site, intensity_moments(site.splits.train, tr.norm_mean, tr.norm_std))

    @app.evaluate(mods=[secure_mod])
    def evaluate(msg: Message, context: Context) -> Message:
        cfg, site, model = _setup(msg, context, overrides)
        metrics = local_evaluate(
            model, site.splits.val, site.splits.classes, cfg.train.eval_batch_size
        )
        return _reply(msg, site, metrics)

    return app


app = make_client_app()
