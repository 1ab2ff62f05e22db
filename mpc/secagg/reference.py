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

from mpc.secagg.protocol import STAGES, Roster, RoundId
from mpc.secagg.server import ServerSession
from mpc.secagg.site import SiteSession


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


@dataclass
class SharedRound:
    """A server and its sites after the advertise and share stages, with the sites'
    identities and roster (the later stages need them to sign and verify)."""

    server: ServerSession
    sites: dict[str, SiteSession]
    identities: dict[str, ed25519.Ed25519PrivateKey]
    roster: Roster

    def __iter__(self):  # ``server, sites = shared_round(...)``
        return iter((self.server, self.sites))

    def unmask(self, signers: list[str] | None = None, unmaskers: list[str] | None = None) -> None:
        """The consistency stage with the survivors (or ``signers`` of them), then the
        unmask stage with the signers (or ``unmaskers`` of them)."""
        survivors, dropped = self.server.unmask_request()
        signers = [n for n in (survivors if signers is None else signers) if n in survivors]
        for n in signers:
            signature = self.sites[n].sign_survivors(self.identities[n], survivors, dropped)
            self.server.receive_consistency(n, signature)
        proof = self.server.consistency_proof()
        for n in [n for n in (signers if unmaskers is None else unmaskers) if n in signers]:
            shares = self.sites[n].unmask(survivors, dropped, proof, self.roster)
            self.server.receive_unmask(n, shares)


def _run_keys(names: list[str], fraction: float, round_id: RoundId, alive=None) -> SharedRound:
    identities, roster = make_identities(names)
    server = ServerSession(round_id, fraction, len(names), roster)
    sites = {n: SiteSession(n, round_id, fraction) for n in names}
    alive = alive or (lambda stage: names)
    for n in alive("advertise"):
        server.receive_advert(sites[n].advertise(identities[n], len(names)))
    adverts = server.broadcast()
    for n in [n for n in alive("share") if n in server.adverts]:
        server.receive_shares(n, sites[n].share_keys(adverts, roster, identities[n]))
    return SharedRound(server, sites, identities, roster)


def secure_sum(
    inputs: Mapping[str, np.ndarray],
    *,
    fraction: float = 0.66,
    drop: Mapping[str, str] | None = None,
    round_id: RoundId | None = None,
) -> RoundResult:
    """Run one protocol round in process; ``drop={site: stage}`` makes ``site`` vanish
    before answering ``stage`` (one of :data:`~mpc.secagg.protocol.STAGES`)."""
    drop = dict(drop or {})
    for site, stage in drop.items():
        if stage not in STAGES:
            raise ValueError(f"drop stage {stage!r} for {site!r} is not one of {STAGES}")
    round_id = round_id or RoundId("reference", 1, "train")
    names = sorted(inputs)

    def alive(stage: str) -> list[str]:
        order = STAGES.index(stage)
        return [n for n in names if n not in drop or STAGES.index(drop[n]) > order]

    keyed = _run_keys(names, fraction, round_id, alive)
    server, sites = keyed.server, keyed.sites
    for n in [n for n in alive("mask") if n in server.shares]:
        sites[n].receive_shares(server.shares_for(n), keyed.roster)
        server.receive_masked(n, sites[n].masked_input(inputs[n]))
    keyed.unmask(alive("consistency"), alive("unmask"))
    return RoundResult(server.result(), server.unmask_request()[0], server, sites)


def shared_round(
    names: list[str], *, fraction: float = 0.66, round_id: RoundId | None = None
) -> SharedRound:
    """A server and its sites after a round's advertise and share stages, no one dropped
    (tests start the later stages, or tamper with them, from here)."""
    return _run_keys(names, fraction, round_id or RoundId("reference", 1, "train"))
