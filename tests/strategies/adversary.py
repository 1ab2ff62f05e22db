"""Malicious coordinators, built to attack secure aggregation (test-only).

:class:`InconsistentModel` is the model-inconsistency attack of Pasquini, Francati and
Ateniese (CCS 2022): a :class:`~strategies.secure.SecureAggregation` that sends one target
site the real global model and every other site a model whose update it can predict: every
tensor zero (so every ReLU is dead and every norm layer sees a constant) at a round whose
cosine learning rate is 0. Each site's update is then its input back, except the target's;
the revealed sum minus the predicted parts is the target's update. It commits to each
site's own digest, so that each site's check of its own message passes.

:func:`equivocate` drives the key stages itself: it claims a selection of 2 (a site that
takes ``t`` from the server's number uses ``t = 2``), tells one group of survivors that the
target dropped (they return shares of its mask key) and the others that it survived (shares
of its self-mask seed), and uses what colluding sites hand over (their saved sessions and
identity keys). Both act on the real ClientApps through :class:`InProcessGrid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from mpc.secagg import crypto, wire, work
from mpc.secagg.fixedpoint import unpack
from mpc.secagg.protocol import (
    RoundId,
    _mask_seed,
    _pair_mask,
    _self_mask,
    survivor_list_bytes,
)
from mpc.secagg.site import SiteSession
from strategies.secure import ARRAYS, METRICS, SecureAggregation


def _zeros(arrays: ArrayRecord) -> ArrayRecord:
    return ArrayRecord({k: Array(np.zeros_like(a.numpy())) for k, a in arrays.items()})


#: Every attacker built in this process (a simulation builds its ServerApp's strategy from
#: the config, out of the test's reach otherwise).
INSTANCES: list[InconsistentModel] = []


class InconsistentModel(SecureAggregation):
    """Secure aggregation whose server sends the target node (the smallest node id) the
    real model and every other site a zero model at ``silent_round`` (lr 0).

    ``commit_each``: commit to each site's own digest (True), or to the target's for all.
    ``revealed`` holds the last revealed sums.
    """

    def __init__(self, inner, *, silent_round: int, commit_each: bool = True, **kwargs) -> None:
        super().__init__(inner, **kwargs)
        INSTANCES.append(self)
        self.silent_round, self.commit_each = silent_round, commit_each
        self.revealed: tuple[dict[str, np.ndarray], int] | None = None
        self.target: int | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self._grid, self._global = grid, arrays
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.target = min(m.metadata.dst_node_id for m in messages)
        forged = []
        for msg in messages:
            if msg.metadata.dst_node_id != self.target:
                silent = ConfigRecord(dict(msg.content["config"].items()))
                silent["server-round"] = self.silent_round
                content = RecordDict({"arrays": _zeros(msg.content["arrays"]), "config": silent})
                msg = Message(
                    content=content,
                    message_type=msg.metadata.message_type,
                    dst_node_id=msg.metadata.dst_node_id,
                )
            forged.append(msg)
        return self._prepare(forged, server_round, "train")

    def _commitments(self, messages):
        digests = {m.metadata.dst_node_id: work.work_digest(m.content) for m in messages}
        if self.commit_each:
            return digests
        return dict.fromkeys(digests, digests[self.target])

    def _reveal(self, replies, *, arrays=None):
        out = super()._reveal(replies, arrays=arrays)
        if arrays is not None:  # a training round's sums (evaluation passes no arrays)
            self.revealed = out
        return out

    def recover(self, predicted: dict[str, np.ndarray], n_predicted: int) -> dict[str, np.ndarray]:
        """The target's weights: (revealed sum - the others' predicted parts) / its count."""
        sums, n_sites = self.revealed
        others = n_sites - 1
        n_target = float(sums[METRICS + "num-examples"]) - others * n_predicted
        return {
            key: (sums[ARRAYS + key] - others * n_predicted * predicted[key]) / n_target
            for key in predicted
        }


# -- equivocation at the unmask stage ------------------------------------------------------
@dataclass
class Equivocation:
    """What the attacker got: the target's input if it reconstructed it, and per site
    what it released at unmask or why it refused."""

    recovered: np.ndarray | None
    layout: list
    released: dict[str, list[str]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def _send(grid, requests: dict[int, Message]) -> dict[int, Message]:
    return {r.metadata.src_node_id: r for r in grid.send_and_receive(list(requests.values()))}


def _query(node: int, record: ConfigRecord) -> Message:
    return Message(
        content=RecordDict({wire.RECORD: ConfigRecord(record)}),
        message_type=wire.MESSAGE_TYPE,
        dst_node_id=node,
    )


def _session(grid, node: int, kind: str) -> SiteSession:
    """A colluding site's saved session, handed to the attacker."""
    return SiteSession.from_bytes(bytes(grid.contexts[node].state[wire.STATE][kind]))


def _key_stages(grid, rid, messages, claimed):
    """Advertise (claiming ``claimed`` selected) and share; {node: site}, adverts, and
    {site: its shares and commitment}."""
    request = wire.round_record(rid, "advertise", selected=claimed)
    replies = _send(
        grid, {m.metadata.dst_node_id: _query(m.metadata.dst_node_id, request) for m in messages}
    )
    adverts = {n: wire.advert_of(r.content.config_records[wire.RECORD]) for n, r in replies.items()}
    names = {n: a.site for n, a in adverts.items()}
    share = wire.round_record(
        rid,
        "share",
        digest=work.work_digest(messages[0].content),
        **wire.adverts_fields([adverts[n] for n in sorted(adverts, key=names.get)]),
    )
    replies = _send(grid, {n: _query(n, share) for n in names})
    shared = {}
    for node, reply in replies.items():
        record = reply.content.config_records[wire.RECORD]
        site = names[node]
        shared[site] = (wire.blobs_of(record), wire.commitment_of(record, site))
    return names, adverts, shared


def _mask_stage(grid, rid, messages, names, shared):
    """Each site's work with the shares addressed to it and the cohort's commitments;
    {site: masked vector}, layout."""
    commitments = wire.commitments_fields({s: c for s, (_, c) in shared.items()})
    requests = {}
    for msg in messages:
        node = msg.metadata.dst_node_id
        site = names[node]
        content = RecordDict(dict(msg.content.items()))
        blobs = {s: c[site] for s, (c, _) in shared.items() if s != site}
        content[wire.RECORD] = ConfigRecord(
            wire.round_record(rid, "mask", **wire.blobs_fields(blobs), **commitments)
        )
        requests[node] = Message(
            content=content, message_type=msg.metadata.message_type, dst_node_id=node
        )
    masked, layout = {}, None
    for node, reply in _send(grid, requests).items():
        masked[names[node]], layout = wire.masked_of(reply)
    return masked, layout


def _reconstruct(shares: dict[int, bytes]) -> bytes:
    return crypto.reconstruct(shares) if shares else bytes(crypto.SEED_BYTES)


def equivocate(
    grid,
    messages: list[Message],
    *,
    target: str,
    told_dropped: set[str],
    colluders: set[str],
    identities: Path,
    claimed: int = 2,
) -> Equivocation:
    """One training round against ``grid``'s real ClientApps; ``messages``: honest train
    messages (same work for all). ``told_dropped``: the sites told that ``target``
    dropped; every other survivor is told it survived."""
    rid = RoundId(str(grid.run.run_id), 1, "train")
    names, adverts, shared = _key_stages(grid, rid, messages, claimed)
    nodes = {site: node for node, site in names.items()}
    masked, layout = _mask_stage(grid, rid, messages, names, shared)
    cohort = sorted(masked)
    lists = {
        "dropped": ([s for s in cohort if s != target], [target]),
        "alive": (cohort, []),
    }
    group = {s: "dropped" if s in told_dropped else "alive" for s in cohort if s not in colluders}
    keys = {s: crypto.load_identity((identities / f"{s}.key").read_bytes()) for s in colluders}
    signatures: dict[str, dict[str, bytes]] = {"dropped": {}, "alive": {}}
    for which, (survivors, dropped) in lists.items():
        record = wire.round_record(rid, "consistency", survivors=survivors, dropped=dropped)
        askees = {nodes[s]: _query(nodes[s], record) for s, g in group.items() if g == which}
        for node, reply in _send(grid, askees).items():
            if not reply.has_error():
                signatures[which][names[node]] = reply.content.config_records[wire.RECORD][
                    "signature"
                ]
        for s in colluders:  # a colluder signs whatever the server asks
            signed = survivor_list_bytes(rid, survivors, dropped)
            signatures[which][s] = crypto.sign(keys[s], signed)
    outcome = Equivocation(None, layout)
    index = {s: i for i, s in enumerate(sorted(names.values()), start=1)}
    b_shares: dict[int, bytes] = {}
    s_shares: dict[int, bytes] = {}
    for s in colluders:  # the colluders' own shares of the target's secrets
        b, sk = _session(grid, nodes[s], "train").received[target]
        b_shares[index[s]], s_shares[index[s]] = b, sk
    for which, (survivors, dropped) in lists.items():
        record = wire.round_record(
            rid,
            "unmask",
            survivors=survivors,
            dropped=dropped,
            **wire.signatures_fields(signatures[which]),
        )
        askees = {nodes[s]: _query(nodes[s], record) for s, g in group.items() if g == which}
        for node, reply in _send(grid, askees).items():
            site = names[node]
            if reply.has_error():
                outcome.refused[site] = reply.error.reason
                continue
            shares = wire.blobs_of(reply.content.config_records[wire.RECORD])
            outcome.released[site] = sorted(shares)
            if f"b:{target}" in shares:
                b_shares[index[site]] = shares[f"b:{target}"]
            if f"s:{target}" in shares:
                s_shares[index[site]] = shares[f"s:{target}"]
    if not (b_shares and s_shares):
        return outcome
    b, mask_sk = _reconstruct(b_shares), _reconstruct(s_shares)
    y = masked[target] - _self_mask(b, masked[target].size, rid)
    for peer in cohort:
        if peer == target:
            continue
        try:
            seed = _mask_seed(mask_sk, adverts[nodes[peer]].mask_pk, rid, target, peer)
        except ValueError:
            return outcome
        m = _pair_mask(seed, y.size, rid)
        y = y - m if target < peer else y + m
    outcome.recovered = y
    return outcome


def decoded_weights(vector: np.ndarray, layout: list) -> dict[str, np.ndarray]:
    """The model weights a site encoded (``weights x examples``), divided back."""
    values = unpack(vector, layout)
    n = float(values[METRICS + "num-examples"])
    return {k[len(ARRAYS) :]: v / n for k, v in values.items() if k.startswith(ARRAYS)}
