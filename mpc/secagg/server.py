"""The server's side of one secure aggregation round (the stages: :mod:`mpc.secagg.protocol`).

The server relays and counts: it checks every signature it relays against the roster, so
that an honest site is never refused for a forgery the server passed on, and it learns
the sum of the survivors' inputs once ``t`` of them release their shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mpc.secagg import crypto
from mpc.secagg.errors import ProtocolViolation, RoundAbandoned
from mpc.secagg.protocol import (
    SHARE_BYTES,
    Commitment,
    KeyAdvert,
    MaskShares,
    Roster,
    RoundId,
    SharedKeys,
    _mask_seed,
    _pair_mask,
    _self_mask,
    survivor_list_bytes,
    threshold_for,
)


@dataclass
class ServerSession:
    """The server's side of one round; ``transcript`` is everything it ever received."""

    round_id: RoundId
    fraction: float
    selected: int
    roster: Roster | None = None
    #: Fewest adverts worth a round: the sites refuse a smaller cohort anyway.
    min_cohort: int = 2
    #: The digest of the round's work sent at the share stage (None: none committed).
    work: bytes | None = None
    adverts: dict[str, KeyAdvert] = field(default_factory=dict)
    shares: dict[str, dict[str, bytes]] = field(default_factory=dict)
    commitments: dict[str, Commitment] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    signatures: dict[str, bytes] = field(default_factory=dict)
    unmasks: dict[str, dict[str, bytes]] = field(default_factory=dict)
    transcript: list[tuple[str, str, object]] = field(default_factory=list)
    request: tuple[list[str], list[str]] | None = None

    @property
    def threshold(self) -> int:
        return threshold_for(self.selected, self.fraction)

    def _need(self, count: int, what: str) -> None:
        if count < self.threshold:
            raise RoundAbandoned(
                f"round {self.round_id.round} ({self.round_id.kind}) abandoned: {count} "
                f"sites {what}, {self.threshold} needed; nothing was revealed"
            )

    def receive_advert(self, advert: KeyAdvert) -> None:
        self.transcript.append(("advertise", advert.site, advert))
        if self.shares or advert.site in self.adverts:
            raise ProtocolViolation(f"late or repeated round keys from site {advert.site!r}")
        if self.roster is not None:
            self.roster.check(advert, self.round_id)
        self.adverts[advert.site] = advert

    def broadcast(self) -> list[KeyAdvert]:
        """U1's adverts, to send to every site in U1."""
        self._need(len(self.adverts), "advertised keys")
        if len(self.adverts) < self.min_cohort:
            raise RoundAbandoned(
                f"round {self.round_id.round} ({self.round_id.kind}) abandoned: "
                f"{len(self.adverts)} sites advertised keys, below min_cohort={self.min_cohort}"
            )
        return [self.adverts[s] for s in sorted(self.adverts)]

    def receive_shares(self, sender: str, shared: SharedKeys) -> None:
        ciphertexts, commitment = shared
        self.transcript.append(("share", sender, dict(ciphertexts)))
        if sender not in self.adverts:
            raise ProtocolViolation(f"shares from site {sender!r}, which did not advertise")
        if sender in self.shares or self.masked:
            raise ProtocolViolation(f"late or repeated shares from site {sender!r}")
        expected = set(self.adverts) - {sender}
        if set(ciphertexts) != expected:
            raise ProtocolViolation(
                f"site {sender!r} sent shares for {sorted(ciphertexts)}, "
                f"expected {sorted(expected)}"
            )
        if commitment.site != sender:
            raise ProtocolViolation(f"site {sender!r} sent the commitment of {commitment.site!r}")
        if self.roster is not None:
            self.roster.check(commitment, self.round_id)
        self.shares[sender] = dict(ciphertexts)
        self.commitments[sender] = commitment

    def cohort(self) -> list[str]:
        """U2: the sites that shared keys."""
        self._need(len(self.shares), "shared keys")
        return sorted(self.shares)

    def shares_for(self, recipient: str) -> MaskShares:
        """The ciphertexts addressed to ``recipient`` by the other sites of U2, and U2's
        commitments."""
        cohort = self.cohort()
        return MaskShares(
            {s: self.shares[s][recipient] for s in cohort if s != recipient},
            {s: self.commitments[s] for s in cohort},
        )

    def receive_masked(self, sender: str, y: np.ndarray) -> None:
        self.transcript.append(("mask", sender, np.array(y, copy=True)))
        if sender not in self.shares:
            raise ProtocolViolation(f"masked input from site {sender!r}, which shared no keys")
        if sender in self.masked:
            raise ProtocolViolation(
                f"site {sender!r} sent a second update in round {self.round_id.round}; refused"
            )
        if self.request is not None:
            raise ProtocolViolation(f"masked input from site {sender!r} after unmasking began")
        if self.masked and y.shape != next(iter(self.masked.values())).shape:
            raise ProtocolViolation(f"masked input of site {sender!r} has shape {y.shape}")
        self.masked[sender] = np.asarray(y, dtype=np.uint64)

    def unmask_request(self) -> tuple[list[str], list[str]]:
        """``(survivors, dropped)`` to send to every survivor."""
        self._need(len(self.masked), "sent masked inputs")
        if self.request is None:
            survivors = sorted(self.masked)
            self.request = (survivors, sorted(set(self.cohort()) - set(survivors)))
        return self.request

    def receive_consistency(self, sender: str, signature: bytes) -> None:
        """A survivor's signature over the announced lists; the server relays only
        signatures that verify, so that an honest site is never refused for another's."""
        self.transcript.append(("consistency", sender, signature))
        if self.request is None or sender not in self.request[0]:
            raise ProtocolViolation(f"survivor-list signature from {sender!r}, not a survivor")
        if sender in self.signatures:
            raise ProtocolViolation(f"repeated survivor-list signature from site {sender!r}")
        if self.roster is not None:
            self.roster.check_list(
                sender, signature, survivor_list_bytes(self.round_id, *self.request)
            )
        self.signatures[sender] = signature

    def consistency_proof(self) -> dict[str, bytes]:
        """The survivors' signatures to send with the unmask request (``t`` at least)."""
        self._need(len(self.signatures), "signed the survivor list")
        return dict(sorted(self.signatures.items()))

    def receive_unmask(self, sender: str, shares: Mapping[str, bytes]) -> None:
        self.transcript.append(("unmask", sender, dict(shares)))
        if self.request is None or sender not in self.signatures:
            raise ProtocolViolation(f"unmask shares from site {sender!r}, which was not asked")
        if sender in self.unmasks:
            raise ProtocolViolation(f"repeated unmask shares from site {sender!r}")
        survivors, dropped = self.request
        expected = {f"b:{s}" for s in survivors} | {f"s:{d}" for d in dropped}
        if set(shares) != expected:
            raise ProtocolViolation(
                f"site {sender!r} sent unmask shares for {sorted(map(str, shares))[:8]}, "
                f"expected {sorted(expected)[:8]}"
            )
        wrong = sorted(
            k for k, v in shares.items() if not isinstance(v, bytes) or len(v) != SHARE_BYTES
        )
        if wrong:
            raise ProtocolViolation(
                f"site {sender!r} sent unmask shares {wrong[:8]} that are not {SHARE_BYTES} bytes"
            )
        self.unmasks[sender] = dict(shares)

    def result(self) -> np.ndarray:
        """The sum of the survivors' inputs; raises :class:`RoundAbandoned` below ``t``."""
        survivors, dropped = self.unmask_request()
        self._need(len(self.unmasks), "returned unmask shares")
        index = {s: i for i, s in enumerate(sorted(self.adverts), start=1)}

        def secret(kind: str, site: str) -> bytes:
            found = {index[r]: sh[f"{kind}:{site}"] for r, sh in self.unmasks.items()}
            return crypto.reconstruct(found)

        total = np.zeros_like(next(iter(self.masked.values())))
        for site in survivors:
            total += self.masked[site]
            total -= _self_mask(secret("b", site), total.size, self.round_id)
        for gone in dropped:
            sk = secret("s", gone)
            for site in survivors:
                seed = _mask_seed(sk, self.adverts[site].mask_pk, self.round_id, gone, site)
                m = _pair_mask(seed, total.size, self.round_id)
                # site added +m if site < gone, else -m: take it back out.
                total = total - m if site < gone else total + m
        return total
