"""A wrapper around any message-based Flower strategy that makes a federation resumable.

Flower's ``Strategy.start`` numbers rounds from 1 and keeps nothing between processes. This
wrapper delegates every hook to the inner strategy (FedAvg, FedProx, FedAdam, FedYogi,
FedMedian, FedTrimmedAvg, Krum, ...) and adds only what resuming and reporting need:

* rounds continue from ``start_round`` after a restart (the inner strategy sees true round
  numbers, so round-dependent behaviour is unchanged);
* node sampling is seeded per round, and replies are aggregated in site-name order, so a
  resumed federation computes exactly what an uninterrupted one would;
* per-site and aggregated metrics of each round are recorded, and ``on_round_end`` is called
  with them after every round (the server writes its checkpoint there);
* the inner strategy's own state (FedOpt's moments and current model) is exported and
  restored with ``state_dict`` / ``load_state_dict``;
* with ``ema_decay`` set, the sites validate a moving average of the aggregated models
  over rounds (:mod:`task.averaging`), which ``on_round_end`` receives as the
  evaluated weights; training goes on from the plain aggregate;
* with plaintext aggregation, a training reply that must not be aggregated (NaN or Inf,
  a tensor of another shape or dtype, an extra or missing tensor, an update beyond
  ``max_update_norm``, a bad example count; :mod:`task.update_check`) is dropped
  before the inner strategy sees it, and recorded with its reason in the round's
  ``rejected``. Under secure aggregation the replies are masked; the sites check their own
  updates and :class:`~strategies.secure.SecureAggregation` reports what it refused.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from strategies.secure import SecureAggregation
from task import averaging
from task.constants import SITE_RECORD
from task.update_check import (
    UpdateRejected,
    check_metrics,
    check_update,
    check_weight,
    in_model_dtype,
    metric_key_outliers,
    validate_max_norm,
)

log = logging.getLogger(__name__)

#: Attributes of Flower's strategies that hold state across rounds (FedOpt family).
STATEFUL_ATTRIBUTES = ("current_arrays", "m_t", "v_t")
#: Key of the server's moving average of the global model in :meth:`state_dict`.
AVERAGE_STATE = "ema"


def site_name(msg: Message) -> str:
    record = msg.content.config_records.get(SITE_RECORD)
    if record is not None and "name" in record:
        return str(record["name"])
    return f"node-{msg.metadata.src_node_id}"


def _plain(metrics: MetricRecord | None) -> dict[str, Any]:
    return {} if metrics is None else {k: v for k, v in metrics.items()}


def public_site_facts(msg: Message) -> dict[str, Any]:
    """What the site record says besides the site's name (its ε under local DP)."""
    record = msg.content.config_records.get(SITE_RECORD)
    return {} if record is None else {k: v for k, v in record.items() if k != "name"}


class FederationEnded(Exception):
    """Raised by a ``should_stop`` check: the federation ends before its last round."""


@dataclass
class RoundRecord:
    """What one round produced, for the history, the dashboard and the checkpoint."""

    round: int
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=lambda: {"train": 0, "evaluate": 0})
    #: The reasons of the round's failed training replies, as the sites gave them.
    train_errors: list[str] = field(default_factory=list)
    #: Training replies refused before aggregation: {site: reason}.
    rejected: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "train": self.train,
            "evaluate": self.evaluate,
            "sites": self.sites,
            "failures": self.failures,
            "rejected": self.rejected,
        }


class CheckpointedStrategy(Strategy):
    """Resumable, recording wrapper around ``inner``.

    Args:
        inner: the aggregation strategy.
        seed: seeds node sampling in every round.
        on_round_end: ``f(record, arrays, strategy_state, evaluated)`` after each round's
            aggregation and evaluation: the global model, the state to resume from, and
            the weights the sites validated (``arrays`` unless ``ema_decay`` is set).
        start_round: first round to run (``last checkpointed round + 1`` when resuming).
        should_stop: ``f(round)`` before each round's training: a reason to end the
            federation now (for example too few sites with privacy budget left), or None.
        max_update_norm: bound on the L2 norm of a site's update (its weights minus the
            global model's); None: no bound. The other checks on a reply always apply.
        ema_decay: decay of the moving average of the global model that the sites
            validate (:mod:`task.averaging`); None: they validate the aggregate.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        seed: int = 0,
        on_round_end: Callable[[RoundRecord, ArrayRecord, dict, ArrayRecord], None] | None = None,
        start_round: int = 1,
        should_stop: Callable[[int], str | None] | None = None,
        max_update_norm: float | None = None,
        ema_decay: float | None = None,
    ) -> None:
        if start_round < 1:
            raise ValueError(f"start_round={start_round} must be at least 1")
        self.max_update_norm = validate_max_norm(max_update_norm)
        self.ema_decay = averaging.check_decay(ema_decay)
        self._average: dict[str, np.ndarray] | None = None
        # Secure aggregation's replies are masked vectors: there is nothing to look into.
        self.inspects_updates = not isinstance(inner, SecureAggregation)
        self._global: dict[str, np.ndarray] | None = None
        self._dtypes: dict[str, np.dtype] = {}
        self.inner = inner
        self.seed = seed
        self.on_round_end = on_round_end
        self.start_round = start_round
        self.should_stop = should_stop
        self.stopped: str | None = None  # why the federation ended early, if it did
        self._record: RoundRecord | None = None

    # -- round bookkeeping ---------------------------------------------------------------
    def _true_round(self, server_round: int) -> int:
        return server_round + self.start_round - 1

    def _current(self, server_round: int) -> RoundRecord:
        r = self._true_round(server_round)
        if self._record is None or self._record.round != r:
            self._record = RoundRecord(round=r)
        return self._record

    def _check_train_reply(self, msg: Message, weight_key: str) -> float:
        """Raise :class:`UpdateRejected` unless ``msg`` may enter the aggregate; returns
        the norm of its update."""
        site = site_name(msg)
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            raise UpdateRejected(
                site,
                f"expected one ArrayRecord and one MetricRecord, got "
                f"{sorted(content.array_records)} and {sorted(content.metric_records)}",
            )
        metrics = next(iter(content.metric_records.values()))
        if weight_key not in metrics:
            raise UpdateRejected(site, f"its metrics hold no {weight_key!r}")
        check_weight(metrics[weight_key], site=site, key=weight_key)
        check_metrics(dict(metrics.items()), site=site)
        try:
            update = {k: a.numpy() for k, a in next(iter(content.array_records.values())).items()}
        except (TypeError, ValueError) as err:
            raise UpdateRejected(site, f"an array cannot be read: {err}") from err
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train: no global model")
        return check_update(update, self._global, site=site, max_norm=self.max_update_norm)

    def _screen(
        self, valid: list[Message], record: RoundRecord
    ) -> tuple[list[Message], dict[int, float]]:
        """The training replies that pass :mod:`task.update_check`, and their update
        norms by ``id(msg)``; the others are logged and recorded in ``record.rejected``."""
        weight_key = getattr(self.inner, "weighted_by_key", "num-examples")
        kept: list[Message] = []
        norms: dict[int, float] = {}
        for msg in valid:
            try:
                norms[id(msg)] = self._check_train_reply(msg, weight_key)
            except UpdateRejected as err:
                self._reject(record, msg, str(err))
            else:
                kept.append(msg)
        odd = metric_key_outliers(
            [set(next(iter(m.content.metric_records.values())).keys()) for m in kept]
        )
        for i, reason in odd.items():
            self._reject(record, kept[i], str(UpdateRejected(site_name(kept[i]), reason)))
        return [m for i, m in enumerate(kept) if i not in odd], norms

    @staticmethod
    def _reject(record: RoundRecord, msg: Message, reason: str) -> None:
        name = site_name(msg)
        if name in record.rejected:  # two replies under one name: keep both reasons
            name = f"{name} (node {msg.metadata.src_node_id})"
        record.rejected[name] = reason
        log.warning(
            "round %d train: node %d refused before aggregation: %s",
            record.round,
            msg.metadata.src_node_id,
            reason,
        )

    def _sorted_valid(self, replies: Iterable[Message], kind: str, record: RoundRecord):
        replies = list(replies)
        valid = sorted((m for m in replies if not m.has_error()), key=site_name)
        norms: dict[int, float] = {}
        if kind == "train" and self.inspects_updates:
            valid, norms = self._screen(valid, record)
        for msg in replies:
            if msg.has_error():
                record.failures[kind] += 1
                if kind == "train":
                    record.train_errors.append(str(msg.error.reason))
                log.warning(
                    "round %d %s: node %d failed: %s",
                    record.round,
                    kind,
                    msg.metadata.src_node_id,
                    msg.error.reason,
                )
        for msg in valid:
            metrics = next(iter(msg.content.metric_records.values()), None)
            site = record.sites.setdefault(site_name(msg), {})
            site[kind] = _plain(metrics)
            if id(msg) in norms:  # plaintext only: what to set federation.max_update_norm by
                site[kind]["update-norm"] = norms[id(msg)]
            facts = public_site_facts(msg)
            if facts:
                site["privacy"] = facts
        return valid

    # -- delegated hooks -------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = self._true_round(server_round)
        reason = self.should_stop(r) if self.should_stop is not None else None
        if reason:
            raise FederationEnded(f"federation ended before round {r}: {reason}")
        random.seed(self.seed * 7919 + r)  # Flower samples nodes with `random`
        log.info("federated round %d", r)
        global_arrays = {k: a.numpy() for k, a in arrays.items()}
        self._dtypes = {k: a.dtype for k, a in global_arrays.items()}
        if self.inspects_updates:  # what the sites' updates are checked against
            self._global = global_arrays
        return self.inner.configure_train(r, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        record = self._current(server_round)
        valid = self._sorted_valid(replies, "train", record)
        arrays, metrics = self.inner.aggregate_train(record.round, valid)
        if arrays is not None:
            arrays = self._model_dtypes(arrays)
            if self.ema_decay is not None:
                self._average = averaging.update(
                    self._average,
                    {k: a.numpy() for k, a in arrays.items()},
                    self.ema_decay,
                    record.round,
                )
        # An inner strategy may report what it refused itself (secure aggregation: masked
        # vectors of another layout, a revealed mean beyond the bound).
        record.rejected.update(getattr(self.inner, "rejected", {}))
        record.train = _plain(metrics)
        return arrays, metrics

    def _model_dtypes(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` with the global model's dtypes. Flower's FedAvg multiplies every array
        by a float weight, which turns integer counters (BatchNorm's ``num_batches_tracked``)
        into float64; the sites send their model's int64 back, and the dtype check (and the
        model itself) needs the global model to keep its own dtypes round after round."""
        out = {}
        for key, array in arrays.items():
            dtype = self._dtypes.get(key)
            if dtype is not None and np.dtype(array.dtype) != dtype:
                array = Array(in_model_dtype(array.numpy(), dtype))
            out[key] = array
        return ArrayRecord(out)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = self._true_round(server_round)
        random.seed(self.seed * 7919 + r + 104729)
        return self.inner.configure_evaluate(r, self.evaluated(arrays), config, grid)

    def evaluated(self, arrays: ArrayRecord) -> ArrayRecord:
        """The weights the sites validate for the global ``arrays``: the moving average
        when ``ema_decay`` is set and a round has produced one, else ``arrays``."""
        if self._average is None:
            return arrays
        dtypes = {k: np.dtype(a.dtype) for k, a in arrays.items()} | self._dtypes
        return ArrayRecord(
            {k: Array(v) for k, v in averaging.in_dtypes(self._average, dtypes).items()}
        )

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        record = self._current(server_round)
        valid = self._sorted_valid(replies, "evaluate", record)
        metrics = self.inner.aggregate_evaluate(record.round, valid)
        record.evaluate = _plain(metrics)
        return metrics

    def summary(self) -> None:
        log.info("CheckpointedStrategy from round %d around:", self.start_round)
        self.inner.summary()

    # -- the run -------------------------------------------------------------------------
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run rounds ``start_round..num_rounds`` (``num_rounds`` is the total)."""
        remaining = num_rounds - self.start_round + 1
        if remaining < 1:
            log.info("all %d rounds already done; nothing to run", num_rounds)
            return Result(arrays=initial_arrays)

        def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0:
                return None
            record = self._current(server_round)
            result = evaluate_fn(record.round, arrays) if evaluate_fn else None
            if self.on_round_end is not None:
                self.on_round_end(record, arrays, self.state_dict(), self.evaluated(arrays))
            return result

        try:
            return super().start(
                grid,
                initial_arrays,
                num_rounds=remaining,
                timeout=timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=end_of_round,
            )
        except FederationEnded as err:
            # Raised before any message of the round went out: every finished round is
            # already checkpointed and the caller's final evaluation still runs.
            self.stopped = str(err)
            log.warning("%s", err)
            return Result(arrays=initial_arrays)

    # -- state ---------------------------------------------------------------------------
    @property
    def _aggregator(self) -> Strategy:
        """The strategy holding cross-round state (inside a secure aggregation wrapper)."""
        return getattr(self.inner, "aggregator", self.inner)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The inner strategy's cross-round state, as tensors (checkpoint-safe)."""
        state = {}
        for attr in STATEFUL_ATTRIBUTES:
            value = getattr(self._aggregator, attr, None)
            if value is not None:
                state[attr] = {k: torch.from_numpy(np.array(v)) for k, v in value.items()}
        if self._average is not None:
            state[AVERAGE_STATE] = {k: torch.from_numpy(v.copy()) for k, v in self._average.items()}
        return state

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for attr, value in state.items():
            if attr == AVERAGE_STATE:
                if self.ema_decay is None:
                    raise ValueError(
                        "the checkpoint holds a moving average of the global model but "
                        "federation.ema_decay is null: resume with the run's own config"
                    )
                self._average = {k: v.numpy().copy() for k, v in value.items()}
                continue
            if attr not in STATEFUL_ATTRIBUTES:
                raise ValueError(f"unknown strategy state {attr!r} in checkpoint")
            setattr(self._aggregator, attr, {k: v.numpy() for k, v in value.items()})
        if self.ema_decay is not None and AVERAGE_STATE not in state and self.start_round > 1:
            log.warning(
                "the checkpoint holds no moving average of the global model: it starts again "
                "from round %d's aggregate",
                self.start_round,
            )
