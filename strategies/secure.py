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
from collections import Counter
from collections.abc import Callable, Iterable
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
from mpc.secagg.errors import RoundAbandoned, SecAggError
from mpc.secagg.fixedpoint import DEFAULT_FRAC_BITS, DEFAULT_MAX_PARTIES, unpack
from mpc.secagg.identity import load_roster
from mpc.secagg.protocol import DEFAULT_MIN_COHORT, KeyAdvert, RoundId, SharedKeys, threshold_for
from mpc.secagg.server import ServerSession
from strategies.metrics import metrics_from_sums
from task.update_check import (
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


class SecureAggregation(Strategy):
    """Wrap ``inner`` so that every aggregate is computed by secure aggregation.

    Args:
        inner: a FedAvg-family strategy (a subclass of Flower's ``FedAvg``).
        threshold: fraction of the selected sites that must remain at every stage; below
            it the round is abandoned and nothing is revealed.
        roster: JSON file ``{site: OpenSSH public key}``; round keys must verify against it.
        frac_bits, max_parties: the fixed-point encoding (see :mod:`mpc.secagg.fixedpoint`).
        stage_timeout: seconds to wait for the sites at each key stage.
        min_cohort: fewest sites in a round's cohort; the sites refuse a smaller one (each
            also holds its own bound, which its site policy may raise).
        min_sites: fewest sites whose training sum may be revealed; a round with fewer
            survivors is abandoned before the unmask stage (central DP: each site adds
            only a share of the noise, so a smaller sum would carry too little).
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
        threshold_for(2, threshold)  # validates the fraction
        if roster is None:
            raise ValueError("secure.roster is null: secure aggregation needs the sites' roster")
        self.inner = inner
        self.fraction = threshold
        self.roster = load_roster(roster)
        self.frac_bits, self.max_parties = frac_bits, max_parties
        self.stage_timeout = stage_timeout
        self.min_sites = int(min_sites)
        if int(min_cohort) < 2:
            raise ValueError(f"secure.min_cohort={min_cohort} must be at least 2")
        self.min_cohort = int(min_cohort)
        self.max_update_norm = validate_max_norm(max_update_norm)
        #: What the last ``aggregate_train`` refused: {site or "secure-sum": reason}.
        self.rejected: dict[str, str] = {}
        self.transcripts: list[ServerSession] = []  # every session, for audits and tests
        self._grid: Grid | None = None
        self._session: ServerSession | None = None
        self._names: dict[int, str] = {}
        self._global: ArrayRecord | None = None
        #: {round: {node: its keys}} sent with the previous round's unmask shares.
        self._early: dict[RoundId, dict[int, KeyAdvert]] = {}

    @property
    def aggregator(self) -> Strategy:
        """The strategy whose state persists across rounds (for checkpoints)."""
        return self.inner

    # -- key stages ------------------------------------------------------------------------
    def _exchange(self, targets: dict[int, dict[str, Any]], stage: str) -> dict[int, Message]:
        if self._grid is None:
            raise RuntimeError("secure aggregation exchange before any configure_* call")
        messages = [
            Message(
                content=RecordDict({wire.RECORD: ConfigRecord(record)}),
                message_type=wire.MESSAGE_TYPE,
                dst_node_id=node,
            )
            for node, record in targets.items()
        ]
        replies = {}
        for reply in self._grid.send_and_receive(messages, timeout=self.stage_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning(
                    "secure %s: %s dropped: %s",
                    stage,
                    self._names.get(node, f"node {node}"),
                    reply.error.reason,
                )
                continue
            replies[node] = reply
        missing = set(targets) - set(replies)
        if missing:
            log.warning("secure %s: %d site(s) did not answer", stage, len(missing))
        return replies

    def _gather(
        self,
        stage: str,
        targets: dict[int, str],
        request: dict[str, Any] | dict[int, dict[str, Any]],
        accept: Callable[[int, str, ConfigRecord], None],
        *,
        per_node: bool = False,
    ) -> None:
        """Send the record fields ``request`` (with ``per_node``: ``request[node]``) to
        ``targets`` ({node: site}) and pass each answer to ``accept``; a site whose answer
        the protocol refuses is dropped."""
        requests = request if per_node else dict.fromkeys(targets, request)
        for node, reply in self._exchange({n: requests[n] for n in targets}, stage).items():
            try:
                accept(node, targets[node], reply.content.config_records[wire.RECORD])
            except (SecAggError, KeyError, ValueError) as err:
                log.warning("secure %s: %s refused: %s", stage, targets[node], err)

    def _commitments(self, messages: list[Message]) -> dict[int, bytes]:
        """{node: the digest of its message's work} to commit to at the share stage: one digest
        for all, since every site checks that every other signed the same."""
        by_content: dict[int, bytes] = {}  # FedAvg gives every message one RecordDict
        digests = {}
        for m in messages:
            if id(m.content) not in by_content:
                by_content[id(m.content)] = wire.work_digest(m.content)
            digests[m.metadata.dst_node_id] = by_content[id(m.content)]
        if len(set(digests.values())) != 1:
            raise ValueError(
                "the inner strategy sent the sites different models or configs; secure "
                "aggregation needs one for all (the sites would refuse the round)"
            )
        return digests

    def _advertise(
        self, session: ServerSession, by_node: dict[int, Message], early: dict[int, KeyAdvert]
    ) -> dict[int, str]:
        """Collect the round keys of the nodes in ``by_node``: those sent ``early`` with
        the previous round's unmask shares, and by an advertise stage from the rest;
        {node: site}."""
        names: dict[int, str] = {}

        def advertised(node: int, _: str, record: ConfigRecord | KeyAdvert) -> None:
            advert = record if isinstance(record, KeyAdvert) else wire.advert_of(record)
            session.receive_advert(advert)
            names[node] = advert.site

        for node in set(early) & set(by_node):
            try:
                advertised(node, "", early[node])
            except (SecAggError, ValueError) as err:
                log.warning("secure advertise: node %d's early keys refused: %s", node, err)
        rest = {n: f"node {n}" for n in by_node if n not in names}
        if rest:
            request = wire.round_record(session.round_id, "advertise", selected=len(by_node))
            self._gather("advertise", rest, request, advertised)
        self._names.update(names)
        return names

    def _prepare(self, messages: list[Message], server_round: int, kind: str) -> list[Message]:
        """Run the advertise and share stages with the sampled nodes, then attach to each
        train / evaluate message the ciphertexts addressed to its site and the cohort's
        commitments to the work."""
        self._session = None
        if not messages:
            return messages
        run = str(self._grid.run.run_id) if self._grid is not None else "0"
        rid = RoundId(run, server_round, kind)
        digests = self._commitments(messages)
        session = ServerSession(
            rid,
            self.fraction,
            len(messages),
            self.roster,
            self.min_cohort,
            digests[messages[0].metadata.dst_node_id],
        )
        self.transcripts.append(session)
        by_node = {m.metadata.dst_node_id: m for m in messages}
        try:
            names = self._advertise(session, by_node, self._early.pop(rid, {}))
            self._early.clear()  # keys for any other round are stale
            adverts = session.broadcast()
            nodes = {n: s for n, s in names.items() if s in session.adverts}
            keys = wire.adverts_fields(adverts)
            requests = {
                n: wire.round_record(rid, "share", digest=digests[n], **keys) for n in nodes
            }
            self._gather(
                "share",
                nodes,
                requests,
                lambda _, site, record: session.receive_shares(
                    site, SharedKeys(wire.blobs_of(record), wire.commitment_of(record, site))
                ),
                per_node=True,
            )
            cohort = session.cohort()
        except RoundAbandoned as err:
            log.warning("%s", err)
            return []
        self._session = session
        out = []
        for node, site in nodes.items():
            if site not in cohort:
                continue
            msg = by_node[node]
            content = RecordDict(dict(msg.content.items()))
            ciphertexts, commitments = session.shares_for(site)
            content[wire.RECORD] = ConfigRecord(
                wire.round_record(
                    rid,
                    "mask",
                    **wire.blobs_fields(ciphertexts),
                    **wire.commitments_fields(commitments),
                )
            )
            out.append(
                Message(content=content, message_type=msg.metadata.message_type, dst_node_id=node)
            )
        log.info(
            "secure %s round %d: %d of %d sites masked", kind, server_round, len(out), len(messages)
        )
        return out

    def _refuse(self, site: str, reason: str) -> None:
        log.warning("secure mask: %s refused: %s", site, reason)
        self.rejected[site] = reason

    def _expected_arrays(self) -> dict[str, list]:
        """The layout entries a training reply must hold: one per global tensor."""
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train")
        return {
            ARRAYS + key: [list(array.shape), self.frac_bits] for key, array in self._global.items()
        }

    def _reveal(
        self, replies: Iterable[Message], *, arrays: dict[str, list] | None = None
    ) -> tuple[dict[str, np.ndarray], int] | None:
        """Collect masked vectors, run the unmask stage and decode the sums.

        ``arrays`` ({name: [shape, frac_bits]}): the model entries every training reply's
        layout must hold. Among the replies that hold them, the most common layout wins
        (ties: the first received); a reply of another layout is refused, so that one site
        cannot make the others' vectors unusable by answering first.
        """
        session, self._session = self._session, None
        if session is None:
            return None
        received: list[tuple[str, np.ndarray, list]] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            site = self._names.get(node, f"node {node}")
            try:
                vector, site_layout = wire.masked_of(reply)  # the layout covers the vector
                if arrays is not None:
                    got = {n: [s, f] for n, s, f in site_layout if n.startswith(ARRAYS)}
                    wrong = sorted(n for n in set(got) | set(arrays) if got.get(n) != arrays.get(n))
                    if wrong:
                        raise ValueError(
                            f"layout does not match the global model at {wrong[:5]} "
                            f"(sent {[got.get(n) for n in wrong[:5]]}, "
                            f"expected {[arrays.get(n) for n in wrong[:5]]})"
                        )
                received.append((site, vector, site_layout))
            except (SecAggError, KeyError, ValueError, TypeError) as err:
                self._refuse(site, str(err))
        counts = Counter(repr(lay) for _, _, lay in received)
        layout = None
        if received:
            usual = max(counts, key=counts.__getitem__)  # first of the most common
            layout = next(lay for _, _, lay in received if repr(lay) == usual)
        for site, vector, site_layout in received:
            try:
                if site_layout != layout:
                    raise ValueError(f"site {site!r} sent a vector of another layout")
                session.receive_masked(site, vector)
            except (SecAggError, KeyError, ValueError) as err:
                self._refuse(site, str(err))
        try:
            survivors, dropped = session.unmask_request()
            if session.round_id.kind == "train" and len(survivors) < self.min_sites:
                raise RoundAbandoned(
                    f"secure {session.round_id}: {len(survivors)} site(s) left, fewer than "
                    f"min_sites={self.min_sites}; the sum stays hidden"
                )
            nodes = {n: s for n, s in self._names.items() if s in survivors}
            lists = {"survivors": survivors, "dropped": dropped}
            self._gather(
                "consistency",
                nodes,
                wire.round_record(session.round_id, "consistency", **lists),
                lambda _, site, record: session.receive_consistency(
                    site, wire.field_of(record, "signature", bytes)
                ),
            )
            proof = session.consistency_proof()
            following = self._next_round(session.round_id)
            ahead = wire.next_fields(following, session.selected) if following else {}
            early: dict[int, KeyAdvert] = {}

            def unmasked(node: int, site: str, record: ConfigRecord) -> None:
                session.receive_unmask(site, wire.blobs_of(record))
                if following is not None and wire.has_advert(record):
                    early[node] = wire.advert_of(record)  # verified when that round opens

            self._gather(
                "unmask",
                {n: s for n, s in nodes.items() if s in proof},
                wire.round_record(
                    session.round_id, "unmask", **lists, **wire.signatures_fields(proof), **ahead
                ),
                unmasked,
            )
            if following is not None:
                self._early = {following: early}
            total = session.result()
        except RoundAbandoned as err:
            log.warning("%s", err)
            return None
        sums = unpack(total, layout)
        return sums, len(survivors)

    def _next_round(self, current: RoundId) -> RoundId | None:
        """The round whose keys the sites send with ``current``'s unmask shares: a
        round's evaluation follows its training (when the federation evaluates), and the
        next round's training follows either. None for other secure sums."""
        if current.kind == "train" and self.inner.fraction_evaluate > 0:
            return RoundId(current.run, current.round, "evaluate")
        if current.kind in ("train", "evaluate"):
            return RoundId(current.run, current.round + 1, "train")
        return None

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
