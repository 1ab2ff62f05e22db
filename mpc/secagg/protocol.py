"""One round of secure aggregation: the site's and the server's state machines.

Stages (Bonawitz et al., CCS 2017, honest-but-curious server, with signed round keys):

1. **advertise** - each selected site makes two X25519 key pairs for this round (one for
   its channels, one for its pairwise masks) and signs both public keys with its long-term
   identity key. The server collects them: U1.
2. **share** - every site checks all signatures against the roster, draws a self-mask seed
   ``b`` and Shamir-shares ``b`` and its mask private key among U1 with threshold ``t``; the
   share for site ``j`` travels encrypted and authenticated for ``j`` (AES-GCM under an
   X25519 key agreed with ``j``); the server relays ciphertext only. Senders: U2.
3. **mask** - with the update, each site in U2 receives the shares addressed to it, checks
   them, and sends ``x + PRG(b) + sum_j +-PRG(s_ij)`` in Z_(2^64). Senders: U3.
4. **unmask** - each site in U3 gets the lists of survivors (U3) and dropped (U2 - U3) and
   returns its shares of the survivors' ``b`` and of the dropped sites' mask keys, never
   both for the same site, and only once per round. The server reconstructs, removes
   the masks and learns the sum over U3, nothing else.

While at least ``t`` sites remain at every stage the round completes; below ``t`` it is
abandoned (:class:`RoundAbandoned`) and nothing is revealed, since a site's input is only
ever seen masked by a seed that needs ``t`` shares.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag

from mpc.secagg import crypto
from mpc.secagg.errors import ProtocolViolation, RoundAbandoned, ShareIntegrityError

PROTOCOL = "primia-secagg/1"
STAGES = ("advertise", "share", "mask", "unmask")
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
    #: How many sites the server selected for the round: t is a fraction of these.
    selected: int = 0
    channel_sk: bytes = b""
    channel_pk: bytes = b""
    mask_sk: bytes = b""
    mask_pk: bytes = b""
    peers: dict[str, KeyAdvert] = field(default_factory=dict)
    received: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    self_seed: bytes = b""
    cohort: list[str] = field(default_factory=list)  # U2
    stage: str = "new"

    @property
    def threshold(self) -> int:
        return threshold_for(self.selected, self.fraction)

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
        """Fresh round keys, signed; ``selected`` is the number of sites in the round."""
        self._expect("advertise")
        if selected < 2:
            raise ProtocolViolation(f"a round of {selected} selected site(s) cannot be secure")
        self.selected = selected
        self.channel_sk, self.channel_pk = crypto.x25519_keypair()
        self.mask_sk, self.mask_pk = crypto.x25519_keypair()
        unsigned = KeyAdvert(self.name, self.channel_pk, self.mask_pk, b"")
        signature = crypto.sign(identity, unsigned.signed_bytes(self.round_id))
        return KeyAdvert(self.name, self.channel_pk, self.mask_pk, signature)

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

    def unmask(self, survivors: Iterable[str], dropped: Iterable[str]) -> dict[str, bytes]:
        """Our shares: of ``b`` for survivors, of the mask key for dropped sites."""
        self._expect("unmask")
        survivors, dropped = sorted(survivors), sorted(dropped)
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
        out = {f"b:{s}": self.received[s][0] for s in survivors}
        out.update({f"s:{d}": self.received[d][1] for d in dropped})
        return out

    # -- persistence between messages --------------------------------------------------------
    def to_bytes(self) -> bytes:
        def adv(a: KeyAdvert) -> list[str]:
            return [a.site, a.channel_pk.hex(), a.mask_pk.hex(), a.signature.hex()]

        state = {
            "name": self.name,
            "round_id": [self.round_id.run, self.round_id.round, self.round_id.kind],
            "fraction": self.fraction,
            "selected": self.selected,
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
                selected=s["selected"],
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
        if type(self.selected) is not int or self.selected < 0:
            refuse(f"selected {self.selected!r:.40}")
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
    adverts: dict[str, KeyAdvert] = field(default_factory=dict)
    shares: dict[str, dict[str, bytes]] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
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

    def receive_unmask(self, sender: str, shares: Mapping[str, bytes]) -> None:
        self.transcript.append(("unmask", sender, dict(shares)))
        if self.request is None or sender not in self.request[0]:
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
