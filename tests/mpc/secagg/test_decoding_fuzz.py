"""Fuzzing what the secure aggregation protocol decodes: a site's saved session, sealed
shares from peers, unmask shares at the server, vector layouts, roster and key files.
Each either decodes or is refused with the protocol's named errors (``SecAggError``
subclasses; ``ValueError`` naming the file for the roster and keys), never a KeyError,
IndexError, struct or numpy error, nor a huge allocation."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import example, given
from hypothesis import strategies as st

from mpc.secagg import crypto
from mpc.secagg.errors import RoundAbandoned, SecAggError, ShareIntegrityError
from mpc.secagg.fixedpoint import MAX_FRAC_BITS, check_layout, encode, pack, unpack
from mpc.secagg.identity import load_identity_file, load_roster, write_identities
from mpc.secagg.protocol import (
    KeyAdvert,
    MalformedMessage,
    MaskShares,
    RoundId,
    _channel_key,
)
from mpc.secagg.reference import shared_round
from mpc.secagg.server import ServerSession
from mpc.secagg.site import SiteSession

NAMES = ["site-0", "site-1", "site-2"]
RID = RoundId("r", 1, "train")
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


@cache
def _round() -> tuple[ServerSession, dict[str, bytes], dict]:
    """A round after the share stage: the server, each site's state as bytes, and the
    sites' identity keys."""
    keyed = shared_round(NAMES, round_id=RID)
    return keyed.server, {n: s.to_bytes() for n, s in keyed.sites.items()}, keyed.identities


def _unmask_stage() -> tuple[ServerSession, dict[str, dict[str, bytes]], np.ndarray]:
    """A fresh server waiting for unmask shares, the honest shares and the true sum."""
    shared, states, identities = _round()
    server = ServerSession(RID, 0.66, len(NAMES), shared.roster)
    server.adverts, server.shares = dict(shared.adverts), dict(shared.shares)
    server.commitments = dict(shared.commitments)
    inputs = {n: encode(np.arange(4.0) + i) for i, n in enumerate(NAMES)}
    sites = {n: SiteSession.from_bytes(states[n]) for n in NAMES[:2]}  # site-2 drops
    for n, site in sites.items():
        site.receive_shares(server.shares_for(n), shared.roster)
        server.receive_masked(n, site.masked_input(inputs[n]))
    survivors, dropped = server.unmask_request()
    for n, site in sites.items():
        server.receive_consistency(n, site.sign_survivors(identities[n], survivors, dropped))
    proof = server.consistency_proof()
    honest = {n: site.unmask(survivors, dropped, proof, shared.roster) for n, site in sites.items()}
    return server, honest, inputs["site-0"] + inputs["site-1"]


def _with_commitments(blobs: dict[str, bytes]) -> MaskShares:
    """``blobs`` for site-0 with the honest commitments of their senders and site-0."""
    made = _round()[0].commitments
    return MaskShares(blobs, {n: made[n] for n in {*blobs, "site-0"} if n in made})


# -- the site's saved session --------------------------------------------------------------
@st.composite
def _garbled_state(draw) -> bytes:
    state = json.loads(_round()[1]["site-0"])
    for key in draw(st.lists(st.sampled_from(sorted(state)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del state[key]
        else:
            state[key] = draw(JSON)
    return json.dumps(state).encode()


@given(st.binary(max_size=200) | _garbled_state())
@example(b"\xff\xfe")
@example(b"[" * 100_000)
@example(b'{"received": {"a": 5}}')
def test_saved_session_decodes_or_is_refused(data: bytes) -> None:
    try:
        session = SiteSession.from_bytes(data)
    except MalformedMessage as err:
        assert "session" in str(err)
        return
    assert SiteSession.from_bytes(session.to_bytes()) == session


def test_saved_session_with_an_unknown_stage_is_refused() -> None:
    state = json.loads(_round()[1]["site-0"]) | {"stage": "finished"}
    with pytest.raises(MalformedMessage, match="stage 'finished'"):
        SiteSession.from_bytes(json.dumps(state).encode())


# -- shares sealed by peers ----------------------------------------------------------------
@given(
    st.dictionaries(st.sampled_from(["site-1", "site-2", "site-0", "x"]), st.binary(max_size=120))
)
@example({"site-1": b""})
@example({"site-1": b"\0" * 5})
def test_garbled_sealed_shares_are_refused_naming_the_sender(blobs: dict[str, bytes]) -> None:
    site = SiteSession.from_bytes(_round()[1]["site-0"])
    with pytest.raises(ShareIntegrityError if blobs else RoundAbandoned) as info:
        site.receive_shares(_with_commitments(blobs), _round()[0].roster)
    if blobs:
        assert any(repr(s) in str(info.value) for s in blobs)


def test_a_sealed_share_of_the_wrong_length_is_refused() -> None:
    """A peer that seals a wrong-sized plaintext under the right key (a buggy or hostile
    site) is refused at the recipient, not at the server's reconstruction."""
    _, states, _ = _round()
    site = SiteSession.from_bytes(states["site-0"])
    peer = SiteSession.from_bytes(states["site-1"])
    key = _channel_key(peer.channel_sk, site.channel_pk, RID, "site-1", "site-0")
    blob = crypto.seal(key, b"short", RID.tag("share", "site-1", "site-0"))
    with pytest.raises(ShareIntegrityError, match="5 bytes of shares, expected 64"):
        site.receive_shares(_with_commitments({"site-1": blob}), _round()[0].roster)


# -- unmask shares at the server -----------------------------------------------------------
@st.composite
def _garbled_unmask(draw) -> dict[str, bytes]:
    shares = dict(_HONEST)
    for key in draw(st.lists(st.sampled_from(sorted(shares)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del shares[key]
        else:
            shares[key] = draw(st.binary(max_size=40))
    shares |= draw(st.dictionaries(st.text(max_size=8), st.binary(max_size=40), max_size=1))
    return shares


_HONEST = _unmask_stage()[1]["site-1"]


@given(_garbled_unmask())
@example({})
@example({"b:site-0": b"", "b:site-1": b"", "s:site-2": b""})
def test_garbled_unmask_shares_are_refused_or_summed(shares: dict[str, bytes]) -> None:
    server, honest, _ = _unmask_stage()
    server.receive_unmask("site-0", honest["site-0"])
    try:
        server.receive_unmask("site-1", shares)
    except SecAggError:
        return
    total = server.result()  # well-formed shares: the sum, wrong if they were forged
    assert total.dtype == np.uint64 and total.shape == (4,)


def test_honest_unmask_shares_give_the_sum() -> None:
    server, honest, expected = _unmask_stage()
    for n, shares in honest.items():
        server.receive_unmask(n, shares)
    np.testing.assert_array_equal(server.result(), expected)


# -- adverts: keys and signatures ----------------------------------------------------------
@given(st.text(max_size=8), st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=80))
@example("site-1", b"\0" * 32, b"\0" * 32, b"")
def test_garbled_round_keys_are_refused(site, channel_pk, mask_pk, signature) -> None:
    shared, _, _ = _round()
    server = ServerSession(RID, 0.66, len(NAMES), shared.roster)
    try:
        server.receive_advert(KeyAdvert(site, channel_pk, mask_pk, signature))
    except SecAggError:  # MalformedMessage for a key of the wrong size
        return
    pytest.fail("a forged advert was accepted")


def test_a_low_order_key_of_a_peer_is_refused_by_name() -> None:
    """X25519 refuses the all-zero public key: the site says whose key it was."""
    _, states, _ = _round()
    site = SiteSession.from_bytes(states["site-0"])
    site.peers["site-1"] = KeyAdvert("site-1", bytes(32), bytes(32), b"")
    with pytest.raises(SecAggError, match="round key of site 'site-1' is unusable"):
        site.receive_shares(_with_commitments({"site-1": bytes(80)}), _round()[0].roster)


# -- layouts -------------------------------------------------------------------------------
@given(JSON, st.integers(0, 20))
@example([["w", [2, -3], 3]], 0)
@example([["w", [2**62, 2**62], 3]], 6)
@example([["w", [2, 3], MAX_FRAC_BITS + 1]], 6)
@example([["w", [2, 3], None]], 6)
@example([[[], [2, 3], 3]], 6)
@example("0", 6)
def test_layouts_fit_their_vector_or_are_refused(layout, length: int) -> None:
    vector = np.arange(length, dtype=np.uint64)
    try:
        check_layout(layout, length)
    except ValueError as err:
        assert "layout" in str(err)
        with pytest.raises(ValueError, match="layout"):
            unpack(vector, layout)
        return
    assert sum(v.size for v in unpack(vector, layout).values()) == length


def test_pack_layouts_pass_the_check_and_unpack_to_the_values() -> None:
    vector, layout = pack({"a": (np.ones((2, 3)), 16), "b": (np.float64(2), 0)})
    layout = json.loads(json.dumps(layout))  # as it travels
    check_layout(layout, len(vector))
    values = unpack(vector, layout)
    np.testing.assert_array_equal(values["a"], np.ones((2, 3)))
    assert float(values["b"]) == 2.0
    with pytest.raises(ValueError, match="layout"):  # one value short: refused
        check_layout(layout, len(vector) - 1)


# -- roster and identity files -------------------------------------------------------------
_ENCRYPTED_KEY = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(b"secret"),
)


def test_an_encrypted_identity_key_is_refused_naming_the_file(tmp_path) -> None:
    (tmp_path / "site.key").write_bytes(_ENCRYPTED_KEY)
    with pytest.raises(ValueError, match=r"site\.key is not an unencrypted .*encrypted"):
        load_identity_file(tmp_path / "site.key")


@cache
def _identity_files(folder: str) -> Path:
    return write_identities(Path(folder), ["site-0", "site-1"])


@st.composite
def _roster_text(draw, valid: str) -> bytes:
    kind = draw(st.sampled_from(("bytes", "json", "mutated")))
    if kind == "bytes":
        return draw(st.binary(max_size=120))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    lines = json.loads(valid)
    name = draw(st.sampled_from(sorted(lines)))
    lines[name] = draw(JSON | st.text(max_size=60).map(lambda t: "ssh-ed25519 " + t))
    return json.dumps(lines).encode()


def test_roster_and_identity_files_load_or_are_refused_naming_the_file(tmp_path) -> None:
    roster = _identity_files(str(tmp_path / "ids"))
    valid_roster, valid_key = roster.read_text(), (roster.parent / "site-0.key").read_bytes()
    bad = tmp_path / "bad"

    @given(_roster_text(valid_roster))
    @example(b"[1, 2]")
    @example(b'{"site-0": 5}')
    @example(b'{"site-0": "ssh-foo AAAAB3NzaC1mb28="}')  # was UnsupportedAlgorithm
    @example(b"\xff")
    def roster_case(text: bytes) -> None:
        bad.write_bytes(text)
        try:
            loaded = load_roster(bad)
        except ValueError as err:
            assert str(bad) in str(err)
            return
        assert all(isinstance(k, str) for k in loaded.keys)

    @given(st.binary(max_size=300) | st.integers(0, len(valid_key)).map(lambda n: valid_key[:n]))
    @example(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    @example(_ENCRYPTED_KEY)  # was TypeError (no password given)
    def key_case(data: bytes) -> None:
        bad.write_bytes(data)
        try:
            load_identity_file(bad)
        except ValueError as err:
            assert str(bad) in str(err)

    roster_case()
    key_case()
