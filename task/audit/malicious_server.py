"""The ``malicious_server`` view: secure aggregation against a server that sends different
models to different sites (Flower-free).

The model-inconsistency attack of Pasquini, Francati and Ateniese (CCS 2022, "Eluding
secure aggregation in federated learning via model inconsistency"): the server sends the
target site the real global model and every other site a model whose update it can
predict, here every tensor zero. On the zero model every activation is zero (every ReLU is
dead, every norm layer outputs its zero bias), so a site's gradient is zero in every tensor
but the last layer's bias, where it is ``softmax(0) - onehot(y)`` averaged over its batch:
a function of its labels alone, which the audit's attacker is given as in the other views.
The revealed sum minus these predicted parts is the target's update; at batch 1 Inverting
Gradients gives its image back.

The sum goes through the real protocol state machines (:mod:`mpc.secagg.site`,
:mod:`mpc.secagg.server`), each site committing to the SHA-256 of the model it was sent as
the round's work, and the server committing to each site's own digest so that every
site's check of its own message passes. With the sites' checks against an active server
on, as in every federation, each site compares its cohort's signed digests at the mask
stage and refuses: the server never receives a masked input. :func:`server_checks`
switches them off (the protocol's test-only switch, restored on exit) to show what the
attack gets without them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mpc.secagg import protocol
from mpc.secagg.errors import ConsistencyError, RoundAbandoned
from mpc.secagg.fixedpoint import DEFAULT_FRAC_BITS, pack, unpack
from mpc.secagg.protocol import RoundId
from mpc.secagg.reference import make_identities
from mpc.secagg.server import ServerSession
from mpc.secagg.site import SiteSession
from task.audit.views import plain_update

#: The site the server attacks (the others get the zero model).
TARGET = "site-0"
#: The secure-aggregation threshold of the default federation (``conf/secure/smpc.yaml``).
THRESHOLD = 0.66


@contextmanager
def server_checks(active: bool) -> Iterator[None]:
    """The sites' checks against an active server on or off within the block, restored on
    exit. The protocol's test-only switch: the audit turns it off only to show what an
    attack gets without the checks; no config reaches it."""
    saved = protocol.ACTIVE_SERVER_CHECKS
    protocol.ACTIVE_SERVER_CHECKS = active
    try:
        yield
    finally:
        protocol.ACTIVE_SERVER_CHECKS = saved


def model_digest(model: nn.Module) -> bytes:
    """SHA-256 of a model's state: every tensor in name order, with its dtype and shape."""
    h = hashlib.sha256(b"primia-audit-model/1")
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.numpy().tobytes())
    return h.digest()


def zero_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every parameter and buffer zero."""
    zero = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in zero.state_dict().values():
            tensor.zero_()
    return zero


def predicted_update(
    zero: nn.Module, labels: torch.Tensor, shape: tuple[int, ...]
) -> list[torch.Tensor]:
    """What the attacker expects of a site sent the zero model: its update on blank images
    with the site's labels (on the zero model the images do not matter)."""
    return plain_update(zero, torch.zeros(shape), labels)


@dataclass
class InconsistentRound:
    """What the attacker got from one round.

    ``target``: the target site's update (its gradient) recovered from the revealed sum,
    or None. ``refusals``: the sites that refused the round and why. ``masked_inputs``:
    how many masked inputs the server received.
    """

    target: list[torch.Tensor] | None
    refusals: dict[str, str] = field(default_factory=dict)
    masked_inputs: int = 0
    abandoned: str = ""

    def outcome(self) -> str:
        """Why the attacker has no update to invert, in words (for the report)."""
        reason = self.refusals.get(TARGET) or next(iter(self.refusals.values()), self.abandoned)
        if self.masked_inputs == 0:
            return f"refused by the sites: {reason}; the attacker received nothing"
        return f"the round revealed no update of the target site ({reason})"


def _names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def inconsistent_round(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    checks: bool,
    frac_bits: int = DEFAULT_FRAC_BITS,
) -> InconsistentRound:
    """One secure aggregation round of ``len(batches)`` sites, the first the target, in
    which the server sends the others the zero model; with the sites' ``checks`` on or off.

    Raises ``ValueError`` if a site's update on the zero model differs from the attacker's
    prediction (a model whose zero weights leave some path alive: the attack's premise
    fails for it).
    """
    names = [TARGET, *(f"site-{i}" for i in range(1, len(batches)))]
    zero = zero_model(model)
    sent = {n: model if n == TARGET else zero for n in names}
    updates = {n: plain_update(sent[n], x, y) for n, (x, y) in zip(names, batches, strict=True)}
    predicted = {
        n: predicted_update(zero, y, tuple(x.shape))
        for n, (x, y) in zip(names, batches, strict=True)
        if n != TARGET
    }
    keys = _names(model)
    for n, guess in predicted.items():
        for key, g, p in zip(keys, updates[n], guess, strict=True):
            if not torch.equal(g, p):
                raise ValueError(
                    f"on the zero model, {n}'s gradient of {key} depends on its images: "
                    f"the model-inconsistency attack cannot predict it for this model"
                )
    vectors, layout = {}, None
    for n in names:
        entries = {
            k: (g.double().numpy(), frac_bits) for k, g in zip(keys, updates[n], strict=True)
        }
        vectors[n], layout = pack(entries)
    works = {n: model_digest(sent[n]) for n in names}
    with server_checks(checks):
        total, survivors, result = _secure_sum(vectors, works)
    if total is None or TARGET not in survivors:
        return result
    revealed = unpack(total, layout)
    result.target = [
        torch.from_numpy(revealed[k]).float()
        - sum((predicted[s][i] for s in survivors if s != TARGET), torch.zeros(()))
        for i, k in enumerate(keys)
    ]
    return result


def _secure_sum(
    vectors: dict[str, np.ndarray], works: dict[str, bytes]
) -> tuple[np.ndarray | None, list[str], InconsistentRound]:
    """Every stage of one protocol round, the server committing to each site's own digest;
    sites that refuse drop out. The revealed sum (None if the round was abandoned), its
    survivors, and what the server got."""
    names = sorted(vectors)
    rid = RoundId("audit", 1, "train")
    identities, roster = make_identities(names)
    server = ServerSession(rid, THRESHOLD, len(names), roster)
    sites = {n: SiteSession(n, rid, THRESHOLD) for n in names}
    result = InconsistentRound(target=None)
    for n in names:
        server.receive_advert(sites[n].advertise(identities[n], len(names)))
    adverts = server.broadcast()
    for n in names:
        server.receive_shares(n, sites[n].share_keys(adverts, roster, identities[n], work=works[n]))
    cohort = server.cohort()
    for n in cohort:
        sites[n].check_work(works[n])  # what it was sent hashes to what it signed
        try:
            sites[n].receive_shares(server.shares_for(n), roster)
        except (ConsistencyError, RoundAbandoned) as err:
            result.refusals[n] = str(err)
            continue
        server.receive_masked(n, sites[n].masked_input(vectors[n]))
    result.masked_inputs = len(server.masked)
    try:
        survivors, dropped = server.unmask_request()
    except RoundAbandoned as err:
        result.abandoned = str(err)
        return None, [], result
    for n in survivors:
        signature = sites[n].sign_survivors(identities[n], survivors, dropped)
        server.receive_consistency(n, signature)
    proof = server.consistency_proof()
    for n in survivors:
        server.receive_unmask(n, sites[n].unmask(survivors, dropped, proof, roster))
    return server.result(), survivors, result
