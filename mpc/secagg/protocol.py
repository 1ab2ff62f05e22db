"""Secure aggregation's shared parts: round ids, signed keys and commitments, the roster.

Stages (Bonawitz et al., CCS 2017, with the consistency check of its malicious-server
variant, signed round keys and signed commitments to the round's work); the site's state
machine is :class:`mpc.secagg.site.SiteSession`, the server's
:class:`mpc.secagg.server.ServerSession`:

1. **advertise** - each selected site makes two X25519 key pairs for the round and signs
   both public keys, bound to the round id, with its long-term identity key. The keys need
   nothing of the round's work, so from a run's second round on a site sends them in its
   reply to the previous round's unmask request, which names the next round; a site
   without such keys gets an advertise request of its own. The server collects them: U1.
2. **share** - the server sends U1's keys and its SHA-256 commitment to the round's work
   (the global model, the train / evaluate config, any normalisation request). Every site
   checks every signature against the roster, refuses a cohort smaller than its
   ``min_cohort``, and takes ``t`` from the cohort it verified and its own fraction, never
   from a number the server sends. It draws a self-mask seed ``b`` and Shamir-shares ``b``
   and its mask private key among U1 with threshold ``t``; each share travels encrypted and
   authenticated for its recipient (AES-GCM under an X25519 key agreed with it); the server
   relays ciphertext only. With its shares it signs the server's digest bound to its own
   run setup (a :class:`Commitment`). Senders: U2.
3. **mask** - with the work, each site in U2 receives the shares addressed to it and every
   U2 site's commitment. It checks that the work hashes to the committed digest and that
   every site of U2 signed the digest it signed (else it refuses, naming the sites that
   differ: a server that sends different models or configs to different sites is caught
   here, before any input leaves a site), checks the shares, and sends
   ``x + PRG(b) + sum_j +-PRG(s_ij)`` in Z_(2^64). Senders: U3.
4. **consistency** - each site in U3 gets the survivor list (U3) and the dropped list
   (U2 - U3), checks them against its cohort, and signs them, bound to run, round and kind.
5. **unmask** - each site gets the same lists with the signatures the server collected.
   Only if the lists are the ones it signed and at least ``t`` roster-verified signatures
   cover them does it return its shares of the survivors' ``b`` and of the dropped sites'
   mask keys, never both for the same site, and only once per round. The server
   reconstructs, removes the masks and learns the sum over U3, nothing else.

A server that tells two groups of survivors different lists needs ``t`` signatures for
each; with ``c`` colluding sites among ``n`` that is impossible while ``c < 2t - n``.

While at least ``t`` sites remain at every stage the round completes; below ``t`` it is
abandoned (:class:`RoundAbandoned`) and nothing is revealed, since a site's input is only
ever seen masked by a seed that needs ``t`` shares.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from cryptography.exceptions import InvalidTag

from mpc.secagg import crypto
from mpc.secagg.errors import ConsistencyError, ProtocolViolation, ShareIntegrityError

PROTOCOL = "primia-secagg/3"
STAGES = ("advertise", "share", "mask", "consistency", "unmask")
DIGEST_BYTES = 32
#: The smallest cohort a site joins unless its config asks for more: in a sum of two sites
#: each can recover the other's input from the sum.
DEFAULT_MIN_COHORT = 3
#: Test-only: the checks against an active server (signed digests of the round's work,
#: the site's own threshold and cohort, signed survivor lists). Tests switch them off to show
#: that each attack succeeds without them; no config or command line can.
ACTIVE_SERVER_CHECKS = True
#: Raw X25519 public keys; a share of a 32-byte secret (two 16-byte Shamir halves).
PUBLIC_KEY_BYTES = 32
SHARE_BYTES = crypto.SEED_BYTES


class MalformedMessage(ProtocolViolation, ValueError):
    """A message or saved state that does not decode: a field missing, of the wrong type
    or size. A ``ProtocolViolation`` for the protocol's callers and a ``ValueError`` for
    those that catch bad values."""


def threshold_for(n: int, fraction: float) -> int:
    """Sites needed to finish a round of ``n``: ``max(2, ceil(fraction * n))``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"secure threshold fraction {fraction} must be in (0, 1]")
    return max(2, math.ceil(fraction * n - 1e-9))


@dataclass(frozen=True)
class RoundId:
    """Binds every key, mask and ciphertext to one run, round and kind of aggregation."""

    run: str
    round: int
    kind: str

    def tag(self, *parts: str) -> bytes:
        return json.dumps([PROTOCOL, self.run, self.round, self.kind, *parts]).encode()


@dataclass(frozen=True)
class KeyAdvert:
    """A site's signed public keys for one round."""

    site: str
    channel_pk: bytes
    mask_pk: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.site, str):
            raise MalformedMessage(f"round keys name site {self.site!r:.60}, not a text name")
        for what in ("channel_pk", "mask_pk", "signature"):
            if not isinstance(getattr(self, what), bytes):
                raise MalformedMessage(f"round keys of site {self.site!r}: {what} is not bytes")
        for what in ("channel_pk", "mask_pk"):
            if len(getattr(self, what)) != PUBLIC_KEY_BYTES:
                raise MalformedMessage(
                    f"round keys of site {self.site!r}: {what} has {len(getattr(self, what))} "
                    f"bytes, an X25519 public key has {PUBLIC_KEY_BYTES}"
                )

    def signed_bytes(self, round_id: RoundId) -> bytes:
        return round_id.tag("advertise", self.site, self.channel_pk.hex(), self.mask_pk.hex())


@dataclass(frozen=True)
class Commitment:
    """A site's signature over the round's work as it will receive it (the server's digest
    bound to the site's run setup: :func:`round_digest`), made at the share stage."""

    site: str
    digest: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.site, str):
            raise MalformedMessage(f"commitment of site {self.site!r:.60}, not a text name")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise MalformedMessage(
                f"commitment of site {self.site!r}: the digest is not {DIGEST_BYTES} bytes"
            )
        if not isinstance(self.signature, bytes):
            raise MalformedMessage(f"commitment of site {self.site!r}: signature is not bytes")

    def signed_bytes(self, round_id: RoundId) -> bytes:
        return round_id.tag("commit", self.site, self.digest.hex())


class SharedKeys(NamedTuple):
    """A site's answer at the share stage: ``{recipient: ciphertext}`` and its commitment."""

    ciphertexts: dict[str, bytes]
    commitment: Commitment


class MaskShares(NamedTuple):
    """What the mask stage hands one site: the ciphertexts addressed to it by the other
    sites of U2, and every U2 site's commitment."""

    ciphertexts: dict[str, bytes]
    commitments: dict[str, Commitment]


class Roster:
    """The federation's sites and their long-term public keys (read from a JSON file)."""

    def __init__(self, keys: Mapping[str, crypto.IdentityPublicKey]) -> None:
        self.keys = dict(keys)

    @classmethod
    def from_lines(cls, lines: Mapping[str, str]) -> Roster:
        return cls({name: crypto.load_identity_public(line) for name, line in lines.items()})

    def check(self, advert: KeyAdvert | Commitment, round_id: RoundId) -> None:
        """Raise :class:`ProtocolViolation` unless the site's roster key signed ``advert``
        (its round keys or its commitment) for ``round_id``."""
        key = self.keys.get(advert.site)
        if key is None:
            raise ProtocolViolation(f"site {advert.site!r} is not in the federation's roster")
        if not crypto.verify(key, advert.signature, advert.signed_bytes(round_id)):
            what = "round keys" if isinstance(advert, KeyAdvert) else "commitment"
            raise ProtocolViolation(
                f"the {what} of site {advert.site!r}: invalid signature (forged, or for "
                "another round)"
            )

    def check_list(self, signer: str, signature: bytes, signed: bytes) -> None:
        """Raise :class:`ConsistencyError` unless ``signer``'s roster key signed ``signed``."""
        key = self.keys.get(signer)
        if key is None:
            raise ConsistencyError(f"survivor list signed by {signer!r}, not in the roster")
        if not isinstance(signature, bytes) or not crypto.verify(key, signature, signed):
            raise ConsistencyError(
                f"the survivor-list signature of site {signer!r} does not verify over this "
                "round's list (forged, or replayed from another round or list)"
            )


def _pair(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


def _agree(private: bytes, peer_public: bytes, info: bytes, peer: str) -> bytes:
    try:
        return crypto.agree(private, peer_public, info)
    except ValueError as err:  # a low-order public key: no shared secret
        raise ProtocolViolation(f"the round key of site {peer!r} is unusable: {err}") from None


def _mask_seed(private: bytes, peer_public: bytes, round_id: RoundId, a: str, b: str) -> bytes:
    return _agree(private, peer_public, round_id.tag("pair-mask", _pair(a, b)), b)


def _channel_key(private: bytes, peer_public: bytes, round_id: RoundId, a: str, b: str) -> bytes:
    return _agree(private, peer_public, round_id.tag("channel", _pair(a, b)), b)


def round_digest(work: bytes, setup: bytes) -> bytes:
    """What a site commits to at the share stage: the server's digest of the round's
    ``work`` bound to the digest of the site's own run ``setup`` (its composed config)."""
    return hashlib.sha256(json.dumps([PROTOCOL, "work", work.hex(), setup.hex()]).encode()).digest()


def survivor_list_bytes(round_id: RoundId, survivors: list[str], dropped: list[str]) -> bytes:
    """What each survivor signs at the consistency stage."""
    return round_id.tag("consistency", json.dumps([sorted(survivors), sorted(dropped)]))


def _self_mask(seed: bytes, length: int, round_id: RoundId) -> np.ndarray:
    return crypto.mask(seed, length, round_id.tag("self-mask"))


def _pair_mask(seed: bytes, length: int, round_id: RoundId) -> np.ndarray:
    return crypto.mask(seed, length, round_id.tag("pair-mask-stream"))


def open_share(
    own_sk: bytes, peer_pk: bytes, round_id: RoundId, me: str, sender: str, blob: bytes
) -> tuple[bytes, bytes]:
    """``sender``'s sealed shares for ``me`` (of its self-mask seed, of its mask key),
    authenticated; :class:`ShareIntegrityError` naming the sender otherwise."""
    key = _channel_key(own_sk, peer_pk, round_id, me, sender)
    if not isinstance(blob, bytes) or len(blob) < crypto.NONCE_BYTES:
        raise ShareIntegrityError(sender, me, "not a sealed ciphertext")
    try:
        plain = crypto.open_sealed(key, blob, round_id.tag("share", sender, me))
    except InvalidTag:
        raise ShareIntegrityError(sender, me, "failed authentication") from None
    if len(plain) != 2 * SHARE_BYTES:
        raise ShareIntegrityError(
            sender, me, f"{len(plain)} bytes of shares, expected {2 * SHARE_BYTES}"
        )
    return plain[:SHARE_BYTES], plain[SHARE_BYTES:]


def check_commitments(
    me: str,
    digest: bytes,
    round_id: RoundId,
    cohort: list[str],
    commitments: Mapping[str, Commitment],
    roster: Roster,
) -> None:
    """Every site of ``cohort`` signed the ``digest`` that ``me`` signed: else the server
    sent some of them another model, config or run setup, and ``me``'s input must not
    join theirs (:class:`ConsistencyError` naming them)."""
    if sorted(commitments) != cohort:
        raise ConsistencyError(
            f"site {me!r}: commitments of {sorted(commitments)} for a cohort of {cohort}; "
            "refused, nothing released"
        )
    for site, commitment in commitments.items():
        if commitment.site != site:
            raise ConsistencyError(f"commitment of {commitment.site!r} relayed as {site!r}")
        roster.check(commitment, round_id)
    differ = sorted(s for s, c in commitments.items() if c.digest != digest)
    if differ:
        raise ConsistencyError(
            f"round {round_id.round} ({round_id.kind}): sites {differ} signed another round "
            f"digest than site {me!r} ({digest.hex()[:12]}): they were sent another model, "
            "config or run setup; round refused, nothing released"
        )
