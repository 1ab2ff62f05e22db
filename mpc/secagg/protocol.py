"""One round of secure aggregation: the site's and the server's state machines.

Stages (Bonawitz et al., CCS 2017, with the consistency check of its malicious-server
variant, and signed round keys):

1. **advertise** - the server commits to a SHA-256 digest of the round's work (the global
   model, the train / evaluate config, any normalisation request). Each selected site
   makes two X25519 key pairs for the round, binds the digest to its run setup, and signs
   both public keys and that digest with its long-term identity key. The server collects
   them: U1.
2. **share** - every site checks every signature against the roster and that every advert
   carries its own digest (else it refuses, naming the sites that differ: a server that
   sends different models to different sites is caught here), refuses a cohort smaller
   than its ``min_cohort``, and takes ``t`` from the cohort it verified and its own
   fraction, never from a number the server sends. It draws a self-mask seed ``b`` and
   Shamir-shares ``b`` and its mask private key among U1 with threshold ``t``; each share
   travels encrypted and authenticated for its recipient (AES-GCM under an X25519 key
   agreed with it); the server relays ciphertext only. Senders: U2.
3. **mask** - with the work, each site in U2 receives the shares addressed to it, checks
   that the work hashes to the committed digest, checks the shares, and sends
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag

from mpc.secagg import crypto
from mpc.secagg.errors import (
    ConsistencyError,
    ProtocolViolation,
    RoundAbandoned,
    ShareIntegrityError,
)

PROTOCOL = "primia-secagg/2"
STAGES = ("advertise", "share", "mask", "consistency", "unmask")
DIGEST_BYTES = 32
#: The smallest cohort a site joins unless its config asks for more: in a sum of two sites
#: each can recover the other's input from the sum.
DEFAULT_MIN_COHORT = 3
#: Test-only: the checks against an active server (digests of the round's work, the
#: site's own threshold and cohort, signed survivor lists). Tests switch them off to show
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
    #: The round's work as this site will receive it, bound to its run setup.
    digest: bytes = bytes(DIGEST_BYTES)

    def __post_init__(self) -> None:
        if not isinstance(self.site, str):
            raise MalformedMessage(f"round keys name site {self.site!r:.60}, not a text name")
        if not isinstance(self.digest, bytes) or len(self.digest) != DIGEST_BYTES:
            raise MalformedMessage(
                f"round keys of site {self.site!r}: the digest is not {DIGEST_BYTES} bytes"
            )
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
        return round_id.tag(
            "advertise", self.site, self.channel_pk.hex(), self.mask_pk.hex(), self.digest.hex()
        )


class Roster:
    """The federation's sites and their long-term public keys (read from a JSON file)."""

    def __init__(self, keys: Mapping[str, crypto.IdentityPublicKey]) -> None:
        self.keys = dict(keys)

    @classmethod
    def from_lines(cls, lines: Mapping[str, str]) -> Roster:
        return cls({name: crypto.load_identity_public(line) for name, line in lines.items()})

    def check(self, advert: KeyAdvert, round_id: RoundId) -> None:
        key = self.keys.get(advert.site)
        if key is None:
            raise ProtocolViolation(f"site {advert.site!r} is not in the federation's roster")
        if not crypto.verify(key, advert.signature, advert.signed_bytes(round_id)):
            raise ProtocolViolation(
                f"the round keys of site {advert.site!r} carry an invalid signature"
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
    """What a site signs at advertise: the server's digest of the round's ``work`` bound to
    the digest of the site's own run ``setup`` (its composed config)."""
    return hashlib.sha256(json.dumps([PROTOCOL, "work", work.hex(), setup.hex()]).encode()).digest()


def survivor_list_bytes(round_id: RoundId, survivors: list[str], dropped: list[str]) -> bytes:
    """What each survivor signs at the consistency stage."""
    return round_id.tag("consistency", json.dumps([sorted(survivors), sorted(dropped)]))


def _self_mask(seed: bytes, length: int, round_id: RoundId) -> np.ndarray:
    return crypto.mask(seed, length, round_id.tag("self-mask"))


def _pair_mask(seed: bytes, length: int, round_id: RoundId) -> np.ndarray:
    return crypto.mask(seed, length, round_id.tag("pair-mask-stream"))


# -- the site ------------------------------------------------------------------------------
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
        n = len(self.peers) if ACTIVE_SERVER_CHECKS else self.claimed
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

    def advertise(
        self,
        identity: crypto.IdentityPrivateKey,
        selected: int,
        *,
        work: bytes = bytes(DIGEST_BYTES),
        setup: bytes = b"",
    ) -> KeyAdvert:
        """Fresh round keys and the digest of the round's ``work`` bound to this site's
        ``setup``, signed. ``selected``: the server's claim, kept only for the checks-off
        mode."""
        self._expect("advertise")
        if selected < 2:
            raise ProtocolViolation(f"a round of {selected} selected site(s) cannot be secure")
        if not isinstance(work, bytes) or len(work) != DIGEST_BYTES:
            raise MalformedMessage(f"the server's digest of the round is not {DIGEST_BYTES} bytes")
        self.claimed, self.work = selected, work
        self.digest = round_digest(work, setup)
        self.channel_sk, self.channel_pk = crypto.x25519_keypair()
        self.mask_sk, self.mask_pk = crypto.x25519_keypair()
        unsigned = KeyAdvert(self.name, self.channel_pk, self.mask_pk, b"", self.digest)
        signature = crypto.sign(identity, unsigned.signed_bytes(self.round_id))
        return KeyAdvert(self.name, self.channel_pk, self.mask_pk, signature, self.digest)

    def _check_cohort(self, peers: dict[str, KeyAdvert]) -> None:
        """Every advert carries our digest, and the cohort is large enough."""
        if not ACTIVE_SERVER_CHECKS:
            return
        differ = sorted(s for s, a in peers.items() if a.digest != self.digest)
        if differ:
            raise ConsistencyError(
                f"round {self.round_id.round} ({self.round_id.kind}): sites {differ} signed "
                f"another round digest than site {self.name!r} ({self.digest.hex()[:12]}): "
                "they were sent another model, config or run setup; round refused, nothing "
                "released"
            )
        if len(peers) < self.min_cohort:
            raise RoundAbandoned(
                f"site {self.name!r}: a cohort of {len(peers)} sites is below its "
                f"min_cohort={self.min_cohort} (in so small a sum each site's input can be "
                "recovered by the others); round refused"
            )

    def share_keys(self, adverts: Iterable[KeyAdvert], roster: Roster) -> dict[str, bytes]:
        """Check every advert, then return ``{recipient: ciphertext}`` of our shares."""
        self._expect("share")
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
        n, t = len(peers), self.threshold
        self.self_seed = crypto.random_seed()
        b_shares = crypto.share(self.self_seed, t, n)
        s_shares = crypto.share(self.mask_sk, t, n)
        out = {}
        for site in sorted(peers):
            i = self._index(site)
            if site == self.name:  # our own shares: kept, never sent
                self.received[site] = (b_shares[i], s_shares[i])
                continue
            key = _channel_key(
                self.channel_sk, peers[site].channel_pk, self.round_id, self.name, site
            )
            aad = self.round_id.tag("share", self.name, site)
            out[site] = crypto.seal(key, b_shares[i] + s_shares[i], aad)
        return out

    def check_work(self, work: bytes) -> None:
        """Refuse work that does not hash to the digest the server committed to."""
        if ACTIVE_SERVER_CHECKS and work != self.work:
            raise ConsistencyError(
                f"site {self.name!r}: the {self.round_id.kind} message of round "
                f"{self.round_id.round} hashes to {work.hex()[:12]}, not to the digest "
                f"{self.work.hex()[:12]} the server committed to; refused, nothing released"
            )

    def receive_shares(self, ciphertexts: Mapping[str, bytes]) -> None:
        """Decrypt and authenticate the shares addressed to us; the senders form U2."""
        if self.stage != "share":
            raise ProtocolViolation(
                f"site {self.name!r} got shares in stage {self.stage!r}; refused"
            )
        for sender, blob in ciphertexts.items():
            if sender not in self.peers or sender == self.name:
                raise ShareIntegrityError(sender, self.name, "sender is not a peer this round")
            if sender in self.received:
                raise ShareIntegrityError(sender, self.name, "replayed: already received")
            key = _channel_key(
                self.channel_sk, self.peers[sender].channel_pk, self.round_id, self.name, sender
            )
            if not isinstance(blob, bytes) or len(blob) < crypto.NONCE_BYTES:
                raise ShareIntegrityError(sender, self.name, "not a sealed ciphertext")
            try:
                plain = crypto.open_sealed(key, blob, self.round_id.tag("share", sender, self.name))
            except InvalidTag:
                raise ShareIntegrityError(sender, self.name, "failed authentication") from None
            if len(plain) != 2 * SHARE_BYTES:
                raise ShareIntegrityError(
                    sender, self.name, f"{len(plain)} bytes of shares, expected {2 * SHARE_BYTES}"
                )
            half = len(plain) // 2
            self.received[sender] = (plain[:half], plain[half:])
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
        if ACTIVE_SERVER_CHECKS:
            self._check_signatures(survivors, dropped, dict(signatures or {}), roster)
        out = {f"b:{s}": self.received[s][0] for s in survivors}
        out.update({f"s:{d}": self.received[d][1] for d in dropped})
        return out

    # -- persistence between messages --------------------------------------------------------
    def to_bytes(self) -> bytes:
        def adv(a: KeyAdvert) -> list[str]:
            return [a.site, a.channel_pk.hex(), a.mask_pk.hex(), a.signature.hex(), a.digest.hex()]

        state = {
            "name": self.name,
            "round_id": [self.round_id.run, self.round_id.round, self.round_id.kind],
            "fraction": self.fraction,
            "min_cohort": self.min_cohort,
            "claimed": self.claimed,
            "work": self.work.hex(),
            "digest": self.digest.hex(),
            "signed": self.signed,
            "keys": [
                k.hex() for k in (self.channel_sk, self.channel_pk, self.mask_sk, self.mask_pk)
            ],
            "peers": [adv(a) for a in self.peers.values()],
            "received": {k: [a.hex(), b.hex()] for k, (a, b) in self.received.items()},
            "self_seed": self.self_seed.hex(),
            "cohort": self.cohort,
            "stage": self.stage,
        }
        return json.dumps(state).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteSession:
        """The session :meth:`to_bytes` saved; :class:`MalformedMessage` if it is corrupt."""
        try:
            s = json.loads(data)
            run, round_no, kind = s["round_id"]
            keys = [bytes.fromhex(k) for k in s["keys"]]
            peers = {p[0]: KeyAdvert(p[0], *map(bytes.fromhex, p[1:])) for p in s["peers"]}
            received = {
                str(k): (bytes.fromhex(a), bytes.fromhex(b)) for k, (a, b) in s["received"].items()
            }
            session = cls(
                name=s["name"],
                round_id=RoundId(run, round_no, kind),
                fraction=s["fraction"],
                min_cohort=s["min_cohort"],
                claimed=s["claimed"],
                work=bytes.fromhex(s["work"]),
                digest=bytes.fromhex(s["digest"]),
                signed=[list(s["signed"][0]), list(s["signed"][1])] if s["signed"] else [],
                channel_sk=keys[0],
                channel_pk=keys[1],
                mask_sk=keys[2],
                mask_pk=keys[3],
                peers=peers,
                received=received,
                self_seed=bytes.fromhex(s["self_seed"]),
                cohort=list(s["cohort"]),
                stage=s["stage"],
            )
        except MalformedMessage as err:
            raise MalformedMessage(f"saved secure aggregation session is corrupt: {err}") from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as err:
            raise MalformedMessage(
                f"saved secure aggregation session is corrupt ({type(err).__name__}: {err})"
            ) from None
        session._check_types()
        return session

    def _check_types(self) -> None:
        def refuse(what: str) -> None:
            raise MalformedMessage(f"saved secure aggregation session is corrupt: {what}")

        rid = self.round_id
        if not (isinstance(self.name, str) and isinstance(rid.run, str)):
            refuse("site or run name is not text")
        if type(rid.round) is not int or not isinstance(rid.kind, str):
            refuse(f"round id {rid} is not (text, integer, text)")
        if type(self.fraction) not in (int, float) or not 0.0 < self.fraction <= 1.0:
            refuse(f"threshold fraction {self.fraction!r:.40}")
        for what in ("claimed", "min_cohort"):
            if type(getattr(self, what)) is not int or getattr(self, what) < 0:
                refuse(f"{what} {getattr(self, what)!r:.40}")
        if len(self.work) != DIGEST_BYTES or len(self.digest) != DIGEST_BYTES:
            refuse("round digest is not 32 bytes")
        if not all(isinstance(c, str) for part in self.signed for c in part):
            refuse("signed survivor list names are not text")
        if self.stage not in ("new", *STAGES):
            refuse(f"stage {self.stage!r:.40} is not one of {('new', *STAGES)}")
        if not all(isinstance(c, str) for c in self.cohort):
            refuse("cohort names are not text")


# -- the server ----------------------------------------------------------------------------
@dataclass
class ServerSession:
    """The server's side of one round; ``transcript`` is everything it ever received."""

    round_id: RoundId
    fraction: float
    selected: int
    roster: Roster | None = None
    #: Fewest adverts worth a round: the sites refuse a smaller cohort anyway.
    min_cohort: int = 2
    #: The digest of the round's work committed to at advertise (None: none committed).
    work: bytes | None = None
    adverts: dict[str, KeyAdvert] = field(default_factory=dict)
    shares: dict[str, dict[str, bytes]] = field(default_factory=dict)
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

    def receive_shares(self, sender: str, ciphertexts: Mapping[str, bytes]) -> None:
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
        self.shares[sender] = dict(ciphertexts)

    def cohort(self) -> list[str]:
        """U2: the sites that shared keys."""
        self._need(len(self.shares), "shared keys")
        return sorted(self.shares)

    def shares_for(self, recipient: str) -> dict[str, bytes]:
        """The ciphertexts addressed to ``recipient`` by the other sites of U2."""
        return {s: self.shares[s][recipient] for s in self.cohort() if s != recipient}

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
