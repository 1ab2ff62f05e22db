"""The rounds of secure aggregation driven over a Flower grid (the server's side).

:class:`SecureRounds` runs :mod:`mpc.secagg.server`'s state machine inside Flower's round:
the key stages are ``query.secagg`` exchanges before the train / evaluate message, the
masking rides on that message, and the consistency and unmask stages are exchanges after
its replies. :class:`~strategies.secure.SecureAggregation`, the strategy, uses the sums.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid

from mpc.secagg import wire
from mpc.secagg.errors import RoundAbandoned, SecAggError
from mpc.secagg.fixedpoint import unpack
from mpc.secagg.identity import load_roster
from mpc.secagg.protocol import DEFAULT_MIN_COHORT, KeyAdvert, RoundId, SharedKeys, threshold_for
from mpc.secagg.server import ServerSession
from strategies import exchange

log = logging.getLogger(__name__)


class SecureRounds:
    """The protocol's message flow for one strategy: see the module docstring.

    Args:
        threshold: fraction of the selected sites that must remain at every stage; below
            it the round is abandoned and nothing is revealed.
        roster: JSON file ``{site: OpenSSH public key}``; round keys must verify against it.
        stage_timeout: seconds to wait for the sites at each key stage.
        min_sites: fewest sites whose training sum may be revealed (central DP: each site
            adds only a share of the noise, so a smaller sum would carry too little).
        min_cohort: fewest sites in a round's cohort; each site also holds its own.
    """

    def __init__(
        self,
        *,
        threshold: float,
        roster: str | None,
        stage_timeout: float,
        min_sites: int = 0,
        min_cohort: int = DEFAULT_MIN_COHORT,
    ) -> None:
        threshold_for(2, threshold)  # validates the fraction
        if roster is None:
            raise ValueError("secure.roster is null: secure aggregation needs the sites' roster")
        if int(min_cohort) < 2:
            raise ValueError(f"secure.min_cohort={min_cohort} must be at least 2")
        self.fraction = threshold
        self.roster = load_roster(roster)
        self.stage_timeout = stage_timeout
        self.min_sites = int(min_sites)
        self.min_cohort = int(min_cohort)
        #: What the last aggregation refused: {site or "secure-sum": reason}.
        self.rejected: dict[str, str] = {}
        self.transcripts: list[ServerSession] = []  # every session, for audits and tests
        #: Wall seconds of each key stage since the round record last took them (the
        #: dashboard's ``secagg/<stage>_seconds``): waiting on the slowest site included.
        self.stage_seconds: dict[str, float] = {}
        self._grid: Grid | None = None
        self._session: ServerSession | None = None
        self._names: dict[int, str] = {}
        #: {round: {node: its keys}} sent with the previous round's unmask shares.
        self._early: dict[RoundId, dict[int, KeyAdvert]] = {}

    def _evaluates(self) -> bool:
        """Whether a round's evaluation follows its training (keys are sent ahead for it)."""
        return False

    def _commitments(self, messages: list[Message]) -> dict[int, bytes]:
        """{node: the digest of its message's work} to commit to (the strategy's)."""
        raise NotImplementedError

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
        ``targets`` ({node: site}) and pass each answer to ``accept``."""
        if self._grid is None:
            raise RuntimeError("secure aggregation exchange before any configure_* call")
        requests = request if per_node else dict.fromkeys(targets, request)
        start = time.perf_counter()
        replies = exchange.send(self._grid, stage, requests, self.stage_timeout, self._names)
        exchange.accept_each(stage, targets, replies, accept)
        elapsed = time.perf_counter() - start
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + elapsed

    def _advertise(
        self, session: ServerSession, by_node: dict[int, Message], early: dict[int, KeyAdvert]
    ) -> dict[int, str]:
        """Collect the round keys of the nodes in ``by_node``: those sent ``early`` with
        the previous round's unmask shares, and by an advertise stage from the rest;
        {node: site}."""
        names: dict[int, str] = {}

        def take(node: int, advert: KeyAdvert) -> None:
            session.receive_advert(advert)
            names[node] = advert.site

        for node in set(early) & set(by_node):
            try:
                take(node, early[node])
            except (SecAggError, ValueError) as err:
                log.warning("secure advertise: node %d's early keys refused: %s", node, err)
        rest = {n: f"node {n}" for n in by_node if n not in names}
        if rest:
            request = wire.round_record(session.round_id, "advertise", selected=len(by_node))
            self._gather(
                "advertise",
                rest,
                request,
                lambda node, _, record: take(node, wire.advert_of(record)),
            )
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
        first = digests[messages[0].metadata.dst_node_id]
        session = ServerSession(
            rid, self.fraction, len(messages), self.roster, self.min_cohort, first
        )
        self.transcripts.append(session)
        by_node = {m.metadata.dst_node_id: m for m in messages}
        try:
            names = self._advertise(session, by_node, self._early.pop(rid, {}))
            self._early.clear()  # keys for any other round are stale
            nodes = {n: s for n, s in names.items() if s in session.adverts}
            self._share(session, nodes, digests)
            cohort = session.cohort()
        except RoundAbandoned as err:
            log.warning("%s", err)
            return []
        self._session = session
        out = [
            exchange.with_shares(by_node[node], session, site)
            for node, site in nodes.items()
            if site in cohort
        ]
        log.info(
            "secure %s round %d: %d of %d sites masked", kind, server_round, len(out), len(messages)
        )
        return out

    def _share(
        self, session: ServerSession, nodes: dict[int, str], digests: dict[int, bytes]
    ) -> None:
        """The share stage: every advertised site gets U1's keys and the digest of its
        work, and answers with its sealed shares and its commitment."""
        keys = wire.adverts_fields(session.broadcast())
        rid = session.round_id
        requests = {n: wire.round_record(rid, "share", digest=digests[n], **keys) for n in nodes}

        def shared(_: int, site: str, record: ConfigRecord) -> None:
            commitment = wire.commitment_of(record, site)
            session.receive_shares(site, SharedKeys(wire.blobs_of(record), commitment))

        self._gather("share", nodes, requests, shared, per_node=True)

    def _refuse(self, site: str, reason: str) -> None:
        log.warning("secure mask: %s refused: %s", site, reason)
        self.rejected[site] = reason

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
        layout = self._collect(session, replies, arrays)
        revealed = self._unmask(session)
        if revealed is None:
            return None
        total, survivors = revealed
        return unpack(total, layout), len(survivors)

    def _collect(
        self, session: ServerSession, replies: Iterable[Message], arrays: dict[str, list] | None
    ) -> list | None:
        """Pass the masked vectors of one layout to ``session``, refusing the rest; the
        layout (None: no vector)."""
        received: list[tuple[str, np.ndarray, list]] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            site = self._names.get(node, f"node {node}")
            try:
                vector, site_layout = wire.masked_of(reply)  # the layout covers the vector
                if arrays is not None:
                    got = {n: [s, f] for n, s, f in site_layout if n.startswith(wire.ARRAYS)}
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
        return layout

    def _unmask(self, session: ServerSession) -> tuple[np.ndarray, list[str]] | None:
        """The consistency and unmask stages; the revealed sum and its survivors, or None
        when the round is abandoned (nothing revealed)."""
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
            return session.result(), survivors
        except RoundAbandoned as err:
            log.warning("%s", err)
            return None

    def _next_round(self, current: RoundId) -> RoundId | None:
        """The round whose keys the sites send with ``current``'s unmask shares: its
        evaluation (if any) follows training, the next training either; else None."""
        if current.kind == "train" and self._evaluates():
            return RoundId(current.run, current.round, "evaluate")
        if current.kind in ("train", "evaluate"):
            return RoundId(current.run, current.round + 1, "train")
        return None
