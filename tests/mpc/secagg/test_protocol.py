"""The protocol's claims, each as a test: correctness, dropouts at every stage, and what an
honest-but-curious server (alone or with fewer than t sites) can learn."""

import numpy as np
import pytest
from scipy import stats

from mpc.secagg import crypto
from mpc.secagg.errors import ProtocolViolation, RoundAbandoned, ShareIntegrityError
from mpc.secagg.fixedpoint import decode, encode
from mpc.secagg.protocol import (
    STAGES,
    KeyAdvert,
    MaskShares,
    RoundId,
    threshold_for,
)
from mpc.secagg.reference import make_identities, plaintext_sum, secure_sum, shared_round
from mpc.secagg.server import ServerSession
from mpc.secagg.site import SiteSession

SITES = [f"site-{i}" for i in range(5)]


def _inputs(n=5, size=4000, seed=0):
    rng = np.random.default_rng(seed)
    return {f"site-{i}": encode(rng.normal(size=size) * (i + 1)) for i in range(n)}


def _uniform_bytes_p(values: np.ndarray) -> float:
    """Chi-square p-value of the byte histogram of ``values`` against uniform."""
    counts = np.bincount(np.asarray(values, dtype=np.uint64).view(np.uint8), minlength=256)
    return stats.chisquare(counts).pvalue


def _shared_round(names, kind="train"):
    """A server and its sites after the advertise and share stages of one round."""
    return shared_round(names, round_id=RoundId("r", 1, kind))


def test_threshold_rule():
    assert [threshold_for(n, 0.66) for n in (2, 3, 5, 10)] == [2, 2, 4, 7]
    with pytest.raises(ValueError, match=r"fraction 1.5"):
        threshold_for(3, 1.5)


def test_revealed_sum_equals_the_plaintext_sum():
    inputs = _inputs()
    result = secure_sum(inputs)
    assert np.array_equal(result.total, plaintext_sum(inputs))
    assert result.survivors == SITES


@pytest.mark.parametrize("stage", STAGES)
def test_one_site_may_vanish_at_any_stage(stage):
    inputs = _inputs()
    result = secure_sum(inputs, drop={"site-2": stage})
    # Vanishing after masking still counts the site's input: it was sent before it vanished.
    expected_in = stage in ("consistency", "unmask")
    assert ("site-2" in result.survivors) is expected_in
    kept = {k: v for k, v in inputs.items() if k in result.survivors}
    assert np.array_equal(result.total, plaintext_sum(kept))


@pytest.mark.parametrize("stage", STAGES)
def test_below_threshold_the_round_is_abandoned(stage):
    # 5 sites, t = 4: two sites vanishing leaves 3.
    with pytest.raises(RoundAbandoned, match=r"nothing was revealed|needed"):
        secure_sum(_inputs(), drop={"site-0": stage, "site-3": stage})


def test_abandoned_round_never_asks_for_unmask_shares():
    inputs = _inputs()
    shared = _shared_round(SITES)
    server, sites = shared
    for n in SITES[:3]:
        sites[n].receive_shares(server.shares_for(n), shared.roster)
        server.receive_masked(n, sites[n].masked_input(inputs[n]))
    with pytest.raises(RoundAbandoned):
        server.unmask_request()
    assert not any(stage == "unmask" for stage, _, _ in server.transcript)


def test_server_transcript_reveals_nothing_about_one_site():
    """(a) The recorded masked input of a site is uniform and independent of its update."""
    size = 20_000
    rng = np.random.default_rng(3)
    update = rng.normal(size=size)
    inputs = {n: encode(np.zeros(size)) for n in SITES}
    inputs["site-1"] = encode(update)  # a real-valued, strongly structured update
    result = secure_sum(inputs)
    recorded = {
        sender: payload for stage, sender, payload in result.server.transcript if stage == "mask"
    }
    y = recorded["site-1"]
    assert _uniform_bytes_p(y) > 1e-3
    # The top 16 bits of a masked value against the true update: no correlation.
    top = (y >> np.uint64(48)).astype(np.float64)
    assert abs(stats.pearsonr(top, update).statistic) < 0.05
    # The unmasked input itself is far from uniform: the test has teeth.
    assert _uniform_bytes_p(inputs["site-1"]) < 1e-6
    # Shares cross the server as ciphertext only: no plaintext share appears in them.
    relayed = b"".join(
        blob
        for stage, _, cts in result.server.transcript
        if stage == "share"
        for blob in cts.values()
    )
    for site in result.sites.values():
        for b_share, s_share in site.received.values():
            assert b_share not in relayed and s_share not in relayed
    # ... while the revealed sum is right.
    np.testing.assert_allclose(decode(result.total), update, atol=5 * 2.0**-33)


def test_coalition_below_threshold_cannot_recover_a_site():
    """(b) Server + t-1 sites, with their full states, cannot unmask site-0's input."""
    inputs = _inputs(size=20_000)
    result = secure_sum(inputs)
    t = threshold_for(len(SITES), 0.66)
    victim, honest = "site-0", "site-4"
    coalition = [s for s in SITES if s not in (victim, honest)][: t - 1]
    assert len(coalition) == t - 1
    state = result.sites
    index = {s: i for i, s in enumerate(sorted(SITES), start=1)}
    # The coalition's shares of the victim's mask key: fewer than t, so a wrong key.
    s_shares = {index[c]: state[c].received[victim][1] for c in coalition}
    assert crypto.reconstruct(s_shares) != state[victim].mask_sk
    # With one share more it would work: the threshold is exactly where the test puts it.
    s_shares[index[honest]] = state[honest].received[victim][1]
    assert crypto.reconstruct(s_shares) == state[victim].mask_sk
    # Everything the coalition can strip off (the self mask, revealed in the unmask stage,
    # and the pairwise masks with its own members) still leaves the masks with the honest
    # site on the victim's input: the residual is uniform and unrelated to the input.
    y = next(p for st, s, p in result.server.transcript if st == "mask" and s == victim)
    rid = result.server.round_id
    b = crypto.reconstruct({index[r]: sh[f"b:{victim}"] for r, sh in result.server.unmasks.items()})
    residual = y - crypto.mask(b, y.size, rid.tag("self-mask"))

    def strip(residual, member):
        seed = crypto.agree(
            state[member].mask_sk,
            state[victim].mask_pk,
            rid.tag("pair-mask", f"{member}|{victim}" if member < victim else f"{victim}|{member}"),
        )
        m = crypto.mask(seed, y.size, rid.tag("pair-mask-stream"))
        return residual - m if victim < member else residual + m

    for member in coalition:
        residual = strip(residual, member)
    assert not np.array_equal(residual, inputs[victim])
    assert _uniform_bytes_p(residual) > 1e-3
    # The control: the same stripping with the honest site's mask as well gives the
    # victim's input exactly, so the residual above is the honest site's mask, not an
    # error of the test's own unmasking.
    assert np.array_equal(strip(residual, honest), inputs[victim])


def test_tampered_or_replayed_share_is_rejected_naming_the_sender():
    """(c) AES-GCM authentication catches a flipped bit, a replay and an old round."""
    ids, roster = make_identities(SITES[:3])

    def setup(round_no):
        rid = RoundId("r", round_no, "train")
        sites = {n: SiteSession(n, rid, 0.66) for n in SITES[:3]}
        adverts = [sites[n].advertise(ids[n], 3) for n in SITES[:3]]
        return sites, {n: sites[n].share_keys(adverts, roster, ids[n]) for n in SITES[:3]}

    def to_site_0(shared, blobs):
        """``blobs`` with the commitments of their senders and site-0 from ``shared``."""
        return MaskShares(blobs, {n: shared[n].commitment for n in {*blobs, "site-0"}})

    sites, cts = setup(1)
    blob = cts["site-1"].ciphertexts["site-0"]
    bad = blob[:20] + bytes([blob[20] ^ 0x01]) + blob[21:]
    with pytest.raises(ShareIntegrityError, match=r"from site 'site-1'.*failed authentication"):
        sites["site-0"].receive_shares(to_site_0(cts, {"site-1": bad}), roster)

    sites, cts = setup(2)
    good = to_site_0(cts, {"site-1": cts["site-1"].ciphertexts["site-0"]})
    sites["site-0"].receive_shares(good, roster)
    with pytest.raises(ShareIntegrityError, match=r"from site 'site-1'.*replayed"):
        sites["site-0"].receive_shares(good, roster)

    old_sites, old_cts = setup(3)
    new_sites, new_cts = setup(4)
    with pytest.raises(ShareIntegrityError, match="from site 'site-2'"):
        old_share = {"site-2": old_cts["site-2"].ciphertexts["site-0"]}
        new_sites["site-0"].receive_shares(to_site_0(new_cts, old_share), roster)
    # A share addressed to another site, relayed to site-0, also fails.
    with pytest.raises(ShareIntegrityError, match="from site 'site-2'"):
        wrong = {"site-2": old_cts["site-2"].ciphertexts["site-1"]}
        old_sites["site-0"].receive_shares(to_site_0(old_cts, wrong), roster)


def test_a_site_cannot_inject_a_second_update():
    """(d) One masked input per site per round, at the server and at the site."""
    inputs = _inputs(n=3)
    shared = _shared_round(sorted(inputs))
    server, sites = shared
    sites["site-0"].receive_shares(server.shares_for("site-0"), shared.roster)
    y = sites["site-0"].masked_input(inputs["site-0"])
    server.receive_masked("site-0", y)
    with pytest.raises(ProtocolViolation, match="site 'site-0' sent a second update"):
        server.receive_masked("site-0", y + np.uint64(1))
    with pytest.raises(ProtocolViolation, match="'mask' request in stage 'mask'"):
        sites["site-0"].masked_input(inputs["site-0"])


def test_server_cannot_substitute_keys_or_ask_for_both_shares():
    names = SITES[:3]
    rid = RoundId("r", 1, "train")
    ids, roster = make_identities(names)
    sites = {n: SiteSession(n, rid, 0.66) for n in names}
    adverts = [sites[n].advertise(ids[n], len(names)) for n in names]
    _, forged_pk = crypto.x25519_keypair()
    forged = KeyAdvert("site-2", adverts[2].channel_pk, forged_pk, adverts[2].signature)
    with pytest.raises(ProtocolViolation, match="round keys of site 'site-2': invalid signature"):
        sites["site-0"].share_keys([adverts[0], adverts[1], forged], roster, ids["site-0"])
    # A full round up to unmask, then a request naming site-2 both survivor and dropped.
    sites = {n: SiteSession(n, rid, 0.66) for n in names}
    adverts = [sites[n].advertise(ids[n], len(names)) for n in names]
    server = ServerSession(rid, 0.66, len(names), roster)
    for a in adverts:
        server.receive_advert(a)
    for n in names[:2]:
        server.receive_shares(n, sites[n].share_keys(server.broadcast(), roster, ids[n]))
    shared = sites["site-2"].share_keys(server.broadcast(), roster, ids["site-2"])
    server.receive_shares("site-2", shared)
    sites["site-0"].receive_shares(server.shares_for("site-0"), roster)
    sites["site-0"].masked_input(encode(np.zeros(4)))
    with pytest.raises(ProtocolViolation, match="survivor and dropped"):
        sites["site-0"].sign_survivors(ids["site-0"], ["site-0", "site-1", "site-2"], ["site-2"])


def test_site_state_survives_serialisation():
    inputs = _inputs(n=3, size=10)
    rid = RoundId("r", 1, "evaluate")
    names = sorted(inputs)
    ids, roster = make_identities(names)
    server = ServerSession(rid, 0.66, len(names), roster)
    sites = {n: SiteSession(n, rid, 0.66) for n in names}
    for n in names:
        server.receive_advert(sites[n].advertise(ids[n], len(names)))
        sites[n] = SiteSession.from_bytes(sites[n].to_bytes())
    adverts = server.broadcast()
    for n in names:
        server.receive_shares(n, sites[n].share_keys(adverts, roster, ids[n]))
        sites[n] = SiteSession.from_bytes(sites[n].to_bytes())
    for n in names:
        sites[n].receive_shares(server.shares_for(n), roster)
        server.receive_masked(n, sites[n].masked_input(inputs[n]))
        sites[n] = SiteSession.from_bytes(sites[n].to_bytes())
    survivors, dropped = server.unmask_request()
    for n in names:
        server.receive_consistency(n, sites[n].sign_survivors(ids[n], survivors, dropped))
        sites[n] = SiteSession.from_bytes(sites[n].to_bytes())
    proof = server.consistency_proof()
    for n in names:
        server.receive_unmask(n, sites[n].unmask(survivors, dropped, proof, roster))
    assert np.array_equal(server.result(), plaintext_sum(inputs))
