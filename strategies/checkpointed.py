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
  restored with ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from task.constants import SITE_RECORD

log = logging.getLogger(__name__)

#: Attributes of Flower's strategies that hold state across rounds (FedOpt family).
STATEFUL_ATTRIBUTES = ("current_arrays", "m_t", "v_t")


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "train": self.train,
            "evaluate": self.evaluate,
            "sites": self.sites,
            "failures": self.failures,
        }


class CheckpointedStrategy(Strategy):
    """Resumable, recording wrapper around ``inner``.

    Args:
        inner: the aggregation strategy.
        seed: seeds node sampling in every round.
        on_round_end: ``f(record, arrays, strategy_state)`` after each round's aggregation
            and evaluation.
        start_round: first round to run (``last checkpointed round + 1`` when resuming).
        should_stop: ``f(round)`` before each round's training: a reason to end the
            federation now (for example too few sites with privacy budget left), or None.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        seed: int = 0,
        on_round_end: Callable[[RoundRecord, ArrayRecord, dict], None] | None = None,
        start_round: int = 1,
        should_stop: Callable[[int], str | None] | None = None,
    ) -> None:
        if start_round < 1:
            raise ValueError(f"start_round={start_round} must be at least 1")
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

    def _sorted_valid(self, replies: Iterable[Message], kind: str, record: RoundRecord):
        replies = list(replies)
        valid = sorted((m for m in replies if not m.has_error()), key=site_name)
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
        return self.inner.configure_train(r, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        record = self._current(server_round)
        valid = self._sorted_valid(replies, "train", record)
        arrays, metrics = self.inner.aggregate_train(record.round, valid)
        record.train = _plain(metrics)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = self._true_round(server_round)
        random.seed(self.seed * 7919 + r + 104729)
        return self.inner.configure_evaluate(r, arrays, config, grid)

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
                self.on_round_end(record, arrays, self.state_dict())
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
        return state

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        for attr, value in state.items():
            if attr not in STATEFUL_ATTRIBUTES:
                raise ValueError(f"unknown strategy state {attr!r} in checkpoint")
            setattr(self._aggregator, attr, {k: v.numpy() for k, v in value.items()})
