"""Secure aggregation around any FedAvg-family strategy: the server learns only sums.

:class:`SecureAggregation` wraps an inner strategy (FedAvg, FedProx, FedAdam, FedYogi, ...)
and runs the protocol of :mod:`mpc.secagg.protocol` inside Flower's round: the key stages
are extra ``query.secagg`` exchanges in ``configure_*``, the masking rides on the train /
evaluate message, and the unmasking is an exchange in ``aggregate_*``. Each site sends
``weights x examples``, its example count and ``metric x examples`` as one masked vector;
the server reveals the sums and divides. The inner strategy then sees a single reply
holding the federation average (FedAvg of one reply is that reply; FedOpt applies its
server optimiser to it), so its server-side behaviour is unchanged. Evaluation counts
(confusion matrix, score histograms) are summed the same way.

Robust aggregators (median, trimmed mean, Krum) need the individual updates, which secure
aggregation exists to hide; they are refused.

Bad updates: the server cannot look inside a masked vector, so each site checks its own
update before encoding it (:mod:`client.secure`). What the server can check, it does: a
training reply whose layout does not match the global model (names, shapes, fractional
bits) or the other sites' is refused, naming the site; and with ``max_update_norm`` set,
a revealed mean update beyond the bound (impossible when every site kept to it, since the
mean of updates within a ball stays in it) discards the round. Both are reported in
:attr:`SecureAggregation.rejected`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from mpc.secagg import wire
from mpc.secagg.fixedpoint import DEFAULT_FRAC_BITS, DEFAULT_MAX_PARTIES
from mpc.secagg.protocol import DEFAULT_MIN_COHORT
from mpc.secagg.work import work_digest
from strategies.metrics import metrics_from_sums
from strategies.secure_rounds import SecureRounds
from task.federation.update_check import (
    MAX_NORM_KEY,
    in_model_dtype,
    update_norm,
    validate_max_norm,
)

log = logging.getLogger(__name__)

ARRAYS, METRICS = wire.ARRAYS, wire.METRICS
#: Aggregators that need every individual update (Flower derives some from FedAvg).
ROBUST = (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)


def _metric_sums(sums: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """The summed example count and the summed metrics (layout prefix removed)."""
    metrics = {k[len(METRICS) :]: v for k, v in sums.items() if k.startswith(METRICS)}
    return float(metrics["num-examples"]), metrics


def _scalar_means(metrics: dict[str, np.ndarray], n: float) -> dict[str, Any]:
    """Example-weighted means of the summed scalar metrics (each was sent as metric x n)."""
    return {k: float(v) / n for k, v in metrics.items() if np.ndim(v) == 0}


def plaintext_aggregation(inner: Strategy) -> Strategy:
    """``secure=none``: the inner strategy as it is (the server sees each update)."""
    return inner


class SecureAggregation(SecureRounds, Strategy):
    """Wrap ``inner`` so that every aggregate is computed by secure aggregation.

    Its replies are masked vectors (``replies_masked``): nothing to screen in them. What it
    refused is in ``rejected``, and the strategy whose state persists is ``aggregator``.

    Args:
        inner: a FedAvg-family strategy (a subclass of Flower's ``FedAvg``).
        threshold, roster, stage_timeout, min_sites, min_cohort: the protocol's settings
            (:class:`~strategies.secure_rounds.SecureRounds`).
        frac_bits, max_parties: the fixed-point encoding (see :mod:`mpc.secagg.fixedpoint`).
        max_update_norm: the bound each site enforces on its update's L2 norm (None: no
            bound); a revealed mean update beyond it discards the round.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        threshold: float = 0.66,
        roster: str | None = None,
        frac_bits: int = DEFAULT_FRAC_BITS,
        max_parties: int = DEFAULT_MAX_PARTIES,
        stage_timeout: float = 300.0,
        min_sites: int = 0,
        max_update_norm: float | None = None,
        min_cohort: int = DEFAULT_MIN_COHORT,
    ) -> None:
        if not isinstance(inner, FedAvg) or isinstance(inner, ROBUST):
            raise ValueError(
                f"secure aggregation needs a FedAvg-family strategy; {type(inner).__name__} "
                "needs the individual updates, which secure aggregation hides"
            )
        SecureRounds.__init__(
            self,
            threshold=threshold,
            roster=roster,
            stage_timeout=stage_timeout,
            min_sites=min_sites,
            min_cohort=min_cohort,
        )
        self.inner = inner
        self.frac_bits, self.max_parties = frac_bits, max_parties
        self.max_update_norm = validate_max_norm(max_update_norm)
        self._global: ArrayRecord | None = None

    replies_masked = True

    def _evaluates(self) -> bool:
        return self.inner.fraction_evaluate > 0

    def _commitments(self, messages: list[Message]) -> dict[int, bytes]:
        """{node: the digest of its message's work} to commit to at the share stage: one digest
        for all, since every site checks that every other signed the same."""
        by_content: dict[int, bytes] = {}  # FedAvg gives every message one RecordDict
        digests = {}
        for m in messages:
            if id(m.content) not in by_content:
                by_content[id(m.content)] = work_digest(m.content)
            digests[m.metadata.dst_node_id] = by_content[id(m.content)]
        if len(set(digests.values())) != 1:
            raise ValueError(
                "the inner strategy sent the sites different models or configs; secure "
                "aggregation needs one for all (the sites would refuse the round)"
            )
        return digests

    @property
    def aggregator(self) -> Strategy:
        """The strategy whose state persists across rounds (for checkpoints)."""
        return self.inner

    def _expected_arrays(self) -> dict[str, list]:
        """The layout entries a training reply must hold: one per global tensor."""
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train")
        return {
            ARRAYS + key: [list(array.shape), self.frac_bits] for key, array in self._global.items()
        }

    # -- training --------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid, self._global = grid, arrays
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        return self._prepare(messages, server_round, "train")

    def _check_mean(
        self,
        means: dict[str, np.ndarray],
        reference: dict[str, np.ndarray],
        n: float,
        n_sites: int,
    ) -> str | None:
        """Why the revealed mean update must not be applied, or None.

        Every honest site's update lies within ``max_update_norm`` of the global model and
        the mean is a convex combination of them (positive example counts), so it lies
        within the bound too, up to the fixed-point rounding of ``n_sites`` encodings. A
        mean beyond it proves that a site broke the bound or sent a false example count.
        """
        norm = update_norm(means, reference)
        if not math.isfinite(norm):
            return f"the revealed mean update is not finite (norm {norm})"
        if self.max_update_norm is None:
            return None
        floats = sum(r.size for r in reference.values() if np.issubdtype(r.dtype, np.floating))
        slack = math.sqrt(floats) * n_sites * 2.0 ** -(self.frac_bits + 1) / n
        if norm > self.max_update_norm * (1 + 1e-9) + slack:
            return (
                f"the revealed mean update of {n_sites} site(s) has norm {norm:.6g}, beyond "
                f"{MAX_NORM_KEY}={self.max_update_norm:g}: a site broke the bound or sent a "
                "false example count; the round's sum is discarded"
            )
        return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        self.rejected = {}
        revealed = self._reveal(replies, arrays=self._expected_arrays())
        if revealed is None:
            return None, None
        sums, n_sites = revealed
        n, summed = _metric_sums(sums)
        if n <= 0:
            # Every honest site sends a positive count: a total of n <= 0 is a site's lie.
            reason = f"the revealed example count is {n:g}; the round's sum is discarded"
            log.warning("secure train round %d: %s", server_round, reason)
            self.rejected["secure-sum"] = reason
            return None, None
        reference = {key: array.numpy() for key, array in self._global.items()}
        means = {key: sums[ARRAYS + key] / n for key in reference}
        reason = self._check_mean(means, reference, n, n_sites)
        if reason is not None:
            log.warning("secure train round %d: %s", server_round, reason)
            self.rejected["secure-sum"] = reason
            return None, None
        averaged = {
            key: Array(in_model_dtype(means[key], ref.dtype).reshape(ref.shape))
            for key, ref in reference.items()
        }
        virtual = Message(
            content=RecordDict(
                {
                    "arrays": ArrayRecord(averaged),
                    "metrics": MetricRecord({self.inner.weighted_by_key: int(n)}),
                }
            ),
            message_type="train",
            dst_node_id=0,
        )
        arrays, _ = self.inner.aggregate_train(server_round, [virtual])
        metrics = _scalar_means(summed, n)
        metrics["num-examples"] = int(n)
        metrics["secure-sites"] = n_sites
        return arrays, MetricRecord(metrics)

    # -- evaluation ------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid = grid
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        return self._prepare(messages, server_round, "evaluate")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        self.rejected = {}
        revealed = self._reveal(replies)
        if revealed is None:
            return None
        sums, n_sites = revealed
        n, summed = _metric_sums(sums)
        metrics = metrics_from_sums(summed, n)
        metrics["secure-sites"] = n_sites
        return metrics

    # -- other secure sums -----------------------------------------------------------------
    def query_mean(
        self, grid: Grid, messages: list[Message], kind: str, *, timeout: float
    ) -> dict[str, float] | None:
        """Example-weighted means of the scalar metrics that ``messages`` (queries answered
        through the sites' secure mod) return, revealing only their sums; None when the
        round is abandoned. Used for the federation's intensity statistics."""
        self._grid = grid
        prepared = self._prepare(messages, 0, kind)
        replies = []
        for reply in grid.send_and_receive(prepared, timeout=timeout):
            if reply.has_error():
                log.warning("secure %s: a site failed: %s", kind, reply.error.reason)
            else:
                replies.append(reply)
        self.rejected = {}
        revealed = self._reveal(replies)
        if revealed is None:
            return None
        sums, n_sites = revealed
        n, summed = _metric_sums(sums)
        out = _scalar_means(summed, n)
        out["num-examples"], out["secure-sites"] = n, n_sites
        return out

    def summary(self) -> None:
        log.info(
            "SecureAggregation (threshold %.2f of selected sites, %d fractional bits) around:",
            self.fraction,
            self.frac_bits,
        )
        self.inner.summary()
