"""A site's side of one secure aggregation round (the stages: :mod:`mpc.secagg.protocol`).

The checks against an active server run here, at the site that holds the secrets: round
keys and cohort commitments verified, ``t`` from what it verified, only committed work,
unmask shares only for a survivor list that ``t`` survivors signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from mpc.secagg import crypto, protocol, site_state
from mpc.secagg.errors import (
    ConsistencyError,
    ProtocolViolation,
    RoundAbandoned,
    ShareIntegrityError,
)
from mpc.secagg.protocol import (
    DEFAULT_MIN_COHORT,
    DIGEST_BYTES,
    STAGES,
    Commitment,
    KeyAdvert,
    MalformedMessage,
    MaskShares,
    Roster,
    RoundId,
    SharedKeys,
    _channel_key,
    _mask_seed,
    _pair_mask,
    _self_mask,
    check_commitments,
    open_share,
    round_digest,
    survivor_list_bytes,
    threshold_for,
)


@dataclass
class SiteSession:
    """One site's side of one round. Its state survives between messages as bytes."""

    name: str
    round_id: RoundId
    fraction: float
    #: The smallest cohort (verified adverts) this site joins.
    min_cohort: int = DEFAULT_MIN_COHORT
    #: How many sites the server says it selected: used only with the checks off.
    claimed: int = 0
    #: The server's digest of the round's work, and the digest this site signed.
    work: bytes = bytes(DIGEST_BYTES)
    digest: bytes = bytes(DIGEST_BYTES)
    channel_sk: bytes = b""
    channel_pk: bytes = b""
    mask_sk: bytes = b""
    mask_pk: bytes = b""
    peers: dict[str, KeyAdvert] = field(default_factory=dict)
    received: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    self_seed: bytes = b""
    cohort: list[str] = field(default_factory=list)  # U2
    #: ``[survivors, dropped]`` as this site signed them at the consistency stage.
    signed: list[list[str]] = field(default_factory=list)
    stage: str = "new"

    @property
    def threshold(self) -> int:
        """``t``: a fraction of the cohort this site verified (checks off: of the server's
        claimed selection, the old protocol)."""
        n = len(self.peers) if protocol.ACTIVE_SERVER_CHECKS else self.claimed
        return threshold_for(n, self.fraction)

    def _index(self, site: str) -> int:
        return sorted(self.peers).index(site) + 1

    def _expect(self, stage: str) -> None:
        order = ("new", *STAGES)
        if order.index(self.stage) != order.index(stage) - 1:
            raise ProtocolViolation(
                f"site {self.name!r} got a {stage!r} request in stage {self.stage!r} of "
                f"round {self.round_id.round} ({self.round_id.kind}); refused"
            )
        self.stage = stage

    def advertise(self, identity: crypto.IdentityPrivateKey, selected: int) -> KeyAdvert:
        """Fresh round keys, signed. ``selected``: the server's claim, kept only for the
        checks-off mode."""
        self._expect("advertise")
        if selected < 2:
            raise ProtocolViolation(f"a round of {selected} selected site(s) cannot be secure")
        self.claimed = selected
        self.channel_sk, self.channel_pk = crypto.x25519_keypair()
        self.mask_sk, self.mask_pk = crypto.x25519_keypair()
        unsigned = KeyAdvert(self.name, self.channel_pk, self.mask_pk, b"")
        signature = crypto.sign(identity, unsigned.signed_bytes(self.round_id))
        return KeyAdvert(self.name, self.channel_pk, self.mask_pk, signature)

    def _check_cohort(self, peers: dict[str, KeyAdvert]) -> None:
        if protocol.ACTIVE_SERVER_CHECKS and len(peers) < self.min_cohort:
            raise RoundAbandoned(
                f"site {self.name!r}: a cohort of {len(peers)} sites is below its "
                f"min_cohort={self.min_cohort} (in so small a sum each site's input can be "
                "recovered by the others); round refused"
            )

    def share_keys(
        self,
        adverts: Iterable[KeyAdvert],
        roster: Roster,
        identity: crypto.IdentityPrivateKey,
        *,
        work: bytes = bytes(DIGEST_BYTES),
        setup: bytes = b"",
    ) -> SharedKeys:
        """Check every advert, then return our shares sealed for each recipient and our
        signed commitment to the server's digest of the round's ``work``, bound to this
        site's ``setup``."""
        self._expect("share")
        if not isinstance(work, bytes) or len(work) != DIGEST_BYTES:
            raise MalformedMessage(f"the server's digest of the round is not {DIGEST_BYTES} bytes")
        peers: dict[str, KeyAdvert] = {}
        for advert in adverts:
            roster.check(advert, self.round_id)
            if advert.site in peers:
                raise ProtocolViolation(f"site {advert.site!r} advertised twice")
            peers[advert.site] = advert
        mine = peers.get(self.name)
        if mine is None or (mine.channel_pk, mine.mask_pk) != (self.channel_pk, self.mask_pk):
            raise ProtocolViolation(f"the server did not relay site {self.name!r}'s own keys")
        self._check_cohort(peers)
        self.peers = peers
        if len(peers) < self.threshold:
            raise RoundAbandoned(f"{len(peers)} sites advertised; {self.threshold} needed")
        self.work, self.digest = work, round_digest(work, setup)
        unsigned = Commitment(self.name, self.digest, b"")
        commitment = Commitment(
            self.name, self.digest, crypto.sign(identity, unsigned.signed_bytes(self.round_id))
        )
        return SharedKeys(self._seal_shares(), commitment)

    def _seal_shares(self) -> dict[str, bytes]:
        n, t = len(self.peers), self.threshold
        self.self_seed = crypto.random_seed()
        b_shares = crypto.share(self.self_seed, t, n)
        s_shares = crypto.share(self.mask_sk, t, n)
        out = {}
        for site in sorted(self.peers):
            i = self._index(site)
            if site == self.name:  # our own shares: kept, never sent
                self.received[site] = (b_shares[i], s_shares[i])
                continue
            key = _channel_key(
                self.channel_sk, self.peers[site].channel_pk, self.round_id, self.name, site
            )
            aad = self.round_id.tag("share", self.name, site)
            out[site] = crypto.seal(key, b_shares[i] + s_shares[i], aad)
        return out

    def check_work(self, work: bytes) -> None:
        """Refuse work that does not hash to the digest the server committed to."""
        if protocol.ACTIVE_SERVER_CHECKS and work != self.work:
            raise ConsistencyError(
                f"site {self.name!r}: the {self.round_id.kind} message of round "
                f"{self.round_id.round} hashes to {work.hex()[:12]}, not to the digest "
                f"{self.work.hex()[:12]} the server committed to; refused, nothing released"
            )

    def receive_shares(self, request: MaskShares, roster: Roster) -> None:
        """Check the cohort's commitments, then decrypt and authenticate the shares
        addressed to us; the senders form U2."""
        if self.stage != "share":
            raise ProtocolViolation(
                f"site {self.name!r} got shares in stage {self.stage!r}; refused"
            )
        ciphertexts, commitments = request
        for sender in ciphertexts:
            if sender not in self.peers or sender == self.name:
                raise ShareIntegrityError(sender, self.name, "sender is not a peer this round")
            if sender in self.received:
                raise ShareIntegrityError(sender, self.name, "replayed: already received")
        if protocol.ACTIVE_SERVER_CHECKS:
            cohort = sorted({*ciphertexts, self.name})
            check_commitments(self.name, self.digest, self.round_id, cohort, commitments, roster)
        for sender, blob in ciphertexts.items():
            self.received[sender] = open_share(
                self.channel_sk,
                self.peers[sender].channel_pk,
                self.round_id,
                self.name,
                sender,
                blob,
            )
        self.cohort = sorted(self.received)
        if len(self.cohort) < self.threshold:
            raise RoundAbandoned(f"{len(self.cohort)} sites shared keys; {self.threshold} needed")

    def masked_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` (uint64, fixed point) plus our self mask and the pairwise masks."""
        self._expect("mask")
        if not self.cohort:
            raise ProtocolViolation(f"site {self.name!r} has no shares to mask with")
        x = np.asarray(x, dtype=np.uint64)
        y = x + _self_mask(self.self_seed, x.size, self.round_id)
        for peer in self.cohort:
            if peer == self.name:
                continue
            seed = _mask_seed(
                self.mask_sk, self.peers[peer].mask_pk, self.round_id, self.name, peer
            )
            m = _pair_mask(seed, x.size, self.round_id)
            y = y + m if self.name < peer else y - m
        return y

    def _check_lists(self, survivors: list[str], dropped: list[str]) -> None:
        if set(survivors) & set(dropped):
            raise ProtocolViolation(
                f"sites {sorted(set(survivors) & set(dropped))} listed as survivor and dropped"
            )
        if sorted(survivors + dropped) != self.cohort:
            raise ProtocolViolation(
                f"survivors and dropped {sorted(survivors + dropped)} differ from the sites "
                f"that shared keys {self.cohort}"
            )
        if self.name not in survivors:
            raise ProtocolViolation(f"site {self.name!r} is not listed among the survivors")
        if len(survivors) < self.threshold:
            raise RoundAbandoned(f"{len(survivors)} survivors; {self.threshold} needed")

    def sign_survivors(
        self, identity: crypto.IdentityPrivateKey, survivors: Iterable[str], dropped: Iterable[str]
    ) -> bytes:
        """Our signature over the announced ``(survivors, dropped)``, after checking them
        against our cohort; we will unmask for these lists only."""
        self._expect("consistency")
        survivors, dropped = sorted(survivors), sorted(dropped)
        self._check_lists(survivors, dropped)
        self.signed = [survivors, dropped]
        return crypto.sign(identity, survivor_list_bytes(self.round_id, survivors, dropped))

    def _check_signatures(
        self,
        survivors: list[str],
        dropped: list[str],
        signatures: Mapping[str, bytes],
        roster: Roster | None,
    ) -> None:
        """The lists are the ones we signed, and ``t`` survivors signed them too."""
        if [survivors, dropped] != self.signed:
            raise ConsistencyError(
                f"site {self.name!r}: the unmask request lists survivors {survivors} and "
                f"dropped {dropped}, but this site signed survivors {self.signed[0]} and "
                f"dropped {self.signed[1]}: the server equivocates; nothing released"
            )
        if roster is None:
            raise ProtocolViolation("unmask needs the roster to verify the survivor list")
        signed = survivor_list_bytes(self.round_id, survivors, dropped)
        for signer, signature in signatures.items():
            if signer not in survivors:
                raise ConsistencyError(
                    f"survivor list signed by {signer!r}, which is not a survivor of "
                    f"round {self.round_id.round} ({self.round_id.kind}); nothing released"
                )
            roster.check_list(signer, signature, signed)
        if len(signatures) < self.threshold:
            raise ConsistencyError(
                f"site {self.name!r}: {len(signatures)} survivors signed the survivor list, "
                f"{self.threshold} needed before any share is released; nothing released"
            )

    def unmask(
        self,
        survivors: Iterable[str],
        dropped: Iterable[str],
        signatures: Mapping[str, bytes] | None = None,
        roster: Roster | None = None,
    ) -> dict[str, bytes]:
        """Our shares: of ``b`` for survivors, of the mask key for dropped sites, once the
        lists are the ones we signed and ``t`` survivors' ``signatures`` cover them."""
        self._expect("unmask")
        survivors, dropped = sorted(survivors), sorted(dropped)
        self._check_lists(survivors, dropped)
        if protocol.ACTIVE_SERVER_CHECKS:
            self._check_signatures(survivors, dropped, dict(signatures or {}), roster)
        out = {f"b:{s}": self.received[s][0] for s in survivors}
        out.update({f"s:{d}": self.received[d][1] for d in dropped})
        return out

    # -- persistence between messages --------------------------------------------------------
    def to_bytes(self) -> bytes:
        return site_state.dump(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteSession:
        """The session :meth:`to_bytes` saved; :class:`MalformedMessage` if it is corrupt."""
        return site_state.load(cls, data)
