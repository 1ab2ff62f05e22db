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
  over rounds (:mod:`task.federation.averaging`), which ``on_round_end`` receives as the
  evaluated weights; training goes on from the plain aggregate;
* with plaintext aggregation, a training reply that must not be aggregated (NaN or Inf,
  a tensor of another shape or dtype, an extra or missing tensor, an update beyond
  ``max_update_norm``, a bad example count; :mod:`strategies.screening`) is dropped
  before the inner strategy sees it, and recorded with its reason in the round's
  ``rejected``. Under secure aggregation the replies are masked; the sites check their own
  updates and :class:`~strategies.secure.SecureAggregation` reports what it refused.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from strategies.round_record import (
    FederationEnded,
    PhaseClock,
    RoundRecord,
    decline_of,
    plain,
    record_declines,
    record_replies,
    site_name,
)
from strategies.screening import UpdateScreen
from task.federation import averaging
from task.federation.update_check import in_model_dtype, validate_max_norm

log = logging.getLogger(__name__)

#: Attributes of Flower's strategies that hold state across rounds (FedOpt family).
STATEFUL_ATTRIBUTES = ("current_arrays", "m_t", "v_t")
#: Key of the server's moving average of the global model in :meth:`state_dict`.
AVERAGE_STATE = "ema"


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
            validate (:mod:`task.federation.averaging`); None: they validate the aggregate.
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
        self.ema_decay = averaging.check_decay(ema_decay)
        self._average: dict[str, np.ndarray] | None = None
        # Masked replies (secure aggregation) hold nothing to look into.
        bound = validate_max_norm(max_update_norm)  # checked under either aggregation
        masked = getattr(inner, "replies_masked", False)
        self.screen = None if masked else UpdateScreen(bound)
        self._dtypes: dict[str, np.dtype] = {}
        self.inner = inner
        self.seed = seed
        self.on_round_end = on_round_end
        self.start_round = start_round
        self.should_stop = should_stop
        self.stopped: str | None = None  # why the federation ended early, if it did
        self._record: RoundRecord | None = None
        self._clock = PhaseClock()

    # -- round bookkeeping ---------------------------------------------------------------
    def _true_round(self, server_round: int) -> int:
        return server_round + self.start_round - 1

    def _current(self, server_round: int) -> RoundRecord:
        r = self._true_round(server_round)
        if self._record is None or self._record.round != r:
            self._record = RoundRecord(round=r)
        return self._record

    def _sorted_valid(self, replies: Iterable[Message], kind: str, record: RoundRecord):
        """The replies without an error, in site-name order (screened when training in
        the clear); each is filed in ``record``."""
        replies = list(replies)
        answered = sorted((m for m in replies if not m.has_error()), key=site_name)
        valid: list[Message] = []
        declines: list[Message] = []
        for msg in answered:
            (declines if decline_of(msg) else valid).append(msg)
        record_declines(declines, kind, record)
        norms: dict[int, float] = {}
        if kind == "train" and self.screen is not None:
            weight_key = getattr(self.inner, "weighted_by_key", "num-examples")
            valid, norms = self.screen.screen(valid, record, weight_key)
        record_replies(replies, valid, kind, record, norms)
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
        if self.screen is not None:  # what the sites' updates are checked against
            self.screen.set_global(global_arrays)
        messages = self.inner.configure_train(r, arrays, config, grid)
        self._clock.start("train")
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        record = self._current(server_round)
        self._clock.stop("train", record)
        self._clock.start("aggregate")
        valid = self._sorted_valid(replies, "train", record)
        arrays, metrics = self.inner.aggregate_train(record.round, valid)
        self._clock.stop("aggregate", record)
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
        record.train = plain(metrics)
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
        messages = self.inner.configure_evaluate(r, self.evaluated(arrays), config, grid)
        self._clock.start("evaluate")
        return messages

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
        self._clock.stop("evaluate", record)
        valid = self._sorted_valid(replies, "evaluate", record)
        metrics = self.inner.aggregate_evaluate(record.round, valid)
        record.evaluate = plain(metrics)
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
            timings = getattr(self.inner, "stage_seconds", None)  # secure aggregation's
            if timings:
                record.secure_seconds, self.inner.stage_seconds = dict(timings), {}
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
