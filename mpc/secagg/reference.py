"""The plaintext reference sum and an in-process driver of the secure protocol.

Both take ``{site: uint64 vector}`` and return the ring sum, so tests and benchmarks can
compare the protocol with what it must reproduce. The driver passes every message through
the same state machines a Flower deployment uses, and can drop sites at any stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from mpc.secagg.protocol import STAGES, Roster, RoundId, ServerSession, SiteSession


def plaintext_sum(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """What secure aggregation reveals: the sum mod 2^64 of the inputs."""
    vectors = [np.asarray(v, dtype=np.uint64) for v in inputs.values()]
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v
    return total


def make_identities(names: list[str]) -> tuple[dict[str, ed25519.Ed25519PrivateKey], Roster]:
    """Fresh Ed25519 identities and their roster (tests and benchmarks)."""
    keys = {n: ed25519.Ed25519PrivateKey.generate() for n in names}
    return keys, Roster({n: k.public_key() for n, k in keys.items()})


@dataclass
class RoundResult:
    total: np.ndarray
    survivors: list[str]
    server: ServerSession
    sites: dict[str, SiteSession]


def secure_sum(
    inputs: Mapping[str, np.ndarray],
    *,
    fraction: float = 0.66,
    drop: Mapping[str, str] | None = None,
    round_id: RoundId | None = None,
) -> RoundResult:
    """Run one protocol round in process; ``drop={site: stage}`` makes ``site`` vanish
    before answering ``stage`` (one of ``advertise, share, mask, unmask``)."""
    drop = dict(drop or {})
    for site, stage in drop.items():
        if stage not in STAGES:
            raise ValueError(f"drop stage {stage!r} for {site!r} is not one of {STAGES}")
    round_id = round_id or RoundId("reference", 1, "train")
    identities, roster = make_identities(sorted(inputs))
    server = ServerSession(round_id, fraction, len(inputs), roster)
    sites = {n: SiteSession(n, round_id, fraction) for n in sorted(inputs)}

    def alive(stage: str) -> list[str]:
        order = STAGES.index(stage)
        return [n for n in sites if n not in drop or STAGES.index(drop[n]) > order]

    for n in alive("advertise"):
        server.receive_advert(sites[n].advertise(identities[n], len(inputs)))
    adverts = server.broadcast()
    for n in [n for n in alive("share") if n in server.adverts]:
        server.receive_shares(n, sites[n].share_keys(adverts, roster))
    for n in [n for n in alive("mask") if n in server.shares]:
        sites[n].receive_shares(server.shares_for(n))
        server.receive_masked(n, sites[n].masked_input(inputs[n]))
    survivors, dropped = server.unmask_request()
    for n in [n for n in alive("unmask") if n in survivors]:
        server.receive_unmask(n, sites[n].unmask(survivors, dropped))
    return RoundResult(server.result(), survivors, server, sites)


def shared_round(
    names: list[str], *, fraction: float = 0.66, round_id: RoundId | None = None
) -> tuple[ServerSession, dict[str, SiteSession]]:
    """A server and its sites after a round's advertise and share stages, no one dropped
    (tests start the later stages, or tamper with them, from here)."""
    round_id = round_id or RoundId("reference", 1, "train")
    identities, roster = make_identities(names)
    server = ServerSession(round_id, fraction, len(names), roster)
    sites = {n: SiteSession(n, round_id, fraction) for n in names}
    for n in names:
        server.receive_advert(sites[n].advertise(identities[n], len(names)))
    adverts = server.broadcast()
    for n in names:
        server.receive_shares(n, sites[n].share_keys(adverts, roster))
    return server, sites
