"""The checks against an active server, at the protocol's state machines: signed survivor
lists that cannot be forged, replayed or signed by outsiders; signed commitments to the
round's work, checked over the whole cohort before masking; the site's own threshold and
cohort. The attacks themselves, against the real
ClientApps, are in ``tests/strategies/test_malicious_server.py``."""

from __future__ import annotations

import numpy as np
import pytest

from mpc.secagg import crypto, protocol
from mpc.secagg.errors import ConsistencyError, ProtocolViolation, RoundAbandoned
from mpc.secagg.fixedpoint import encode
from mpc.secagg.protocol import (
    Commitment,
    KeyAdvert,
    MaskShares,
    RoundId,
    SharedKeys,
    survivor_list_bytes,
    threshold_for,
)
from mpc.secagg.reference import make_identities, plaintext_sum, secure_sum, shared_round
from mpc.secagg.server import ServerSession
from mpc.secagg.site import SiteSession

NAMES = ["site-0", "site-1", "site-2", "site-3"]


def _masked(names, round_id=None):
    """A round of ``names`` up to the consistency stage, everyone masked."""
    keyed = shared_round(names, round_id=round_id or RoundId("r", 1, "train"))
    for n, site in keyed.sites.items():
        site.receive_shares(keyed.server.shares_for(n), keyed.roster)
        keyed.server.receive_masked(n, site.masked_input(encode(np.arange(3.0))))
    return keyed


def _signed(keyed):
    survivors, dropped = keyed.server.unmask_request()
    sigs = {
        n: keyed.sites[n].sign_survivors(keyed.identities[n], survivors, dropped) for n in survivors
    }
    return survivors, dropped, sigs


def test_honest_rounds_reveal_the_plaintext_sum_with_or_without_the_checks(monkeypatch):
    """(d) the checks change nothing for an honest server: the same sum as the protocol
    without them, which is the plaintext sum."""
    rng = np.random.default_rng(1)
    inputs = {f"site-{i}": encode(rng.normal(size=300)) for i in range(5)}
    with_checks = secure_sum(inputs, drop={"site-4": "mask"}).total
    monkeypatch.setattr(protocol, "ACTIVE_SERVER_CHECKS", False)
    without = secure_sum(inputs, drop={"site-4": "mask"}).total
    kept = {k: v for k, v in inputs.items() if k != "site-4"}
    assert np.array_equal(with_checks, plaintext_sum(kept))
    assert np.array_equal(with_checks, without)


def test_a_forged_survivor_list_signature_is_refused():
    keyed = _masked(NAMES)
    survivors, dropped, sigs = _signed(keyed)
    forged = dict(sigs) | {"site-3": bytes(64)}
    with pytest.raises(ConsistencyError, match="site 'site-3' does not verify"):
        keyed.sites["site-0"].unmask(survivors, dropped, forged, keyed.roster)
    # Signed by another key than the roster's (the server's own) is a forgery too.
    other, _ = make_identities(["site-3"])
    signed = survivor_list_bytes(keyed.server.round_id, survivors, dropped)
    wrong_key = dict(sigs) | {"site-3": crypto.sign(other["site-3"], signed)}
    with pytest.raises(ConsistencyError, match="site 'site-3' does not verify"):
        keyed.sites["site-1"].unmask(survivors, dropped, wrong_key, keyed.roster)


def test_a_signature_replayed_from_another_round_is_refused():
    names = NAMES[:3]
    old = _masked(names, RoundId("r", 1, "train"))
    _, _, old_sigs = _signed(old)
    new = _masked(names, RoundId("r", 2, "train"))
    new.identities = old.identities  # same sites, same long-term keys
    new.roster = old.roster
    survivors, dropped = new.server.unmask_request()
    for n in survivors:  # the sites' own signatures this round, with the old roster keys
        new.sites[n].sign_survivors(new.identities[n], survivors, dropped)
    replayed = {n: old_sigs[n] for n in survivors}
    with pytest.raises(ConsistencyError, match="does not verify over this round's list"):
        new.sites["site-0"].unmask(survivors, dropped, replayed, old.roster)


def test_a_signature_by_a_site_outside_the_cohort_is_refused():
    """site-3 is in the roster but not in this round: its signature does not count."""
    identities, roster = make_identities(NAMES)
    rid = RoundId("r", 1, "train")
    server = ServerSession(rid, 0.66, 3, roster)
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES[:3]}
    for n, site in sites.items():
        server.receive_advert(site.advertise(identities[n], 3))
    for n, site in sites.items():
        server.receive_shares(n, site.share_keys(server.broadcast(), roster, identities[n]))
    for n, site in sites.items():
        site.receive_shares(server.shares_for(n), roster)
        server.receive_masked(n, site.masked_input(encode(np.arange(3.0))))
    survivors, dropped = server.unmask_request()
    sigs = {"site-0": sites["site-0"].sign_survivors(identities["site-0"], survivors, dropped)}
    signed = survivor_list_bytes(rid, survivors, dropped)
    sigs["site-3"] = crypto.sign(identities["site-3"], signed)  # valid key, not a survivor
    with pytest.raises(ConsistencyError, match="'site-3', which is not a survivor"):
        sites["site-0"].unmask(survivors, dropped, sigs, roster)
    with pytest.raises(ProtocolViolation, match="not a survivor"):
        server.receive_consistency("site-3", sigs["site-3"])


def test_an_unmask_list_other_than_the_signed_one_is_refused():
    keyed = _masked(NAMES)
    survivors, _, sigs = _signed(keyed)
    other = [s for s in survivors if s != "site-3"]
    with pytest.raises(ConsistencyError, match="the server equivocates"):
        keyed.sites["site-0"].unmask(other, ["site-3"], sigs, keyed.roster)


def test_fewer_than_t_signatures_release_nothing():
    keyed = _masked(NAMES)  # 4 sites: t = 3
    survivors, dropped, sigs = _signed(keyed)
    two = {n: sigs[n] for n in ("site-0", "site-1")}
    with pytest.raises(ConsistencyError, match="2 survivors signed the survivor list, 3"):
        keyed.sites["site-0"].unmask(survivors, dropped, two, keyed.roster)


def test_the_server_relays_only_signatures_that_verify():
    keyed = _masked(NAMES)
    *_, sigs = _signed(keyed)
    with pytest.raises(ConsistencyError, match="does not verify"):
        keyed.server.receive_consistency("site-0", sigs["site-1"])


def _committed(works: dict[str, bytes], round_no: int = 1, keys=None):
    """Three sites after the share stage, each committed to its own ``works[site]``
    (identities and roster: ``keys``, or fresh)."""
    identities, roster = keys or make_identities(NAMES[:3])
    rid = RoundId("r", round_no, "train")
    server = ServerSession(rid, 0.66, 3, roster)
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES[:3]}
    for n, site in sites.items():
        server.receive_advert(site.advertise(identities[n], 3))
    for n, site in sites.items():
        shared = site.share_keys(server.broadcast(), roster, identities[n], work=works[n])
        server.receive_shares(n, shared)
    return server, sites, roster


def test_a_site_sent_other_work_than_its_cohort_refuses_to_mask_naming_them():
    """The equivocating server of the malicious-server tests, at the state machines: each
    site compares the cohort's signed digests with its own before any input leaves it."""
    works = {"site-0": bytes([1]) * 32, "site-1": bytes([2]) * 32, "site-2": bytes([2]) * 32}
    server, sites, roster = _committed(works)
    with pytest.raises(ConsistencyError, match=r"sites \['site-1', 'site-2'\] signed another"):
        sites["site-0"].receive_shares(server.shares_for("site-0"), roster)
    with pytest.raises(ConsistencyError, match=r"sites \['site-0'\] signed another"):
        sites["site-1"].receive_shares(server.shares_for("site-1"), roster)
    assert sites["site-0"].cohort == [] and sites["site-1"].cohort == []  # nothing opened


def test_without_the_checks_the_same_site_masks(monkeypatch):
    """Control: the refusal above is the commitment check's, not a side effect."""
    works = {"site-0": bytes([1]) * 32, "site-1": bytes([2]) * 32, "site-2": bytes([2]) * 32}
    server, sites, roster = _committed(works)
    monkeypatch.setattr(protocol, "ACTIVE_SERVER_CHECKS", False)
    sites["site-0"].receive_shares(server.shares_for("site-0"), roster)
    assert sites["site-0"].cohort == NAMES[:3]


def test_a_commitment_changed_in_transit_or_replayed_fails_its_signature():
    work, keys = bytes([7]) * 32, make_identities(NAMES[:3])
    server, sites, roster = _committed(dict.fromkeys(NAMES[:3], work), keys=keys)
    ciphertexts, commitments = server.shares_for("site-0")
    c = commitments["site-2"]
    swapped = dict(commitments) | {"site-2": Commitment(c.site, bytes(32), c.signature)}
    with pytest.raises(ProtocolViolation, match="commitment of site 'site-2': invalid signature"):
        sites["site-0"].receive_shares(MaskShares(ciphertexts, swapped), roster)
    old, _, _ = _committed(dict.fromkeys(NAMES[:3], work), round_no=0, keys=keys)
    replayed = dict(commitments) | {"site-2": old.commitments["site-2"]}
    with pytest.raises(ProtocolViolation, match="commitment of site 'site-2': invalid signature"):
        sites["site-0"].receive_shares(MaskShares(ciphertexts, replayed), roster)
    with pytest.raises(ProtocolViolation, match="commitment of site 'site-2': invalid signature"):
        relay = ServerSession(server.round_id, 0.66, 3, roster)  # the server's own check
        for advert in server.adverts.values():
            relay.receive_advert(advert)
        relay.receive_shares("site-2", SharedKeys(server.shares["site-2"], swapped["site-2"]))


def test_a_commitment_missing_for_a_cohort_member_is_refused():
    server, sites, roster = _committed(dict.fromkeys(NAMES[:3], bytes([7]) * 32))
    ciphertexts, commitments = server.shares_for("site-0")
    partial = {n: c for n, c in commitments.items() if n != "site-1"}
    with pytest.raises(ConsistencyError, match="for a cohort of"):
        sites["site-0"].receive_shares(MaskShares(ciphertexts, partial), roster)


def test_an_advert_changed_in_transit_fails_its_signature():
    identities, roster = make_identities(NAMES[:3])
    rid = RoundId("r", 1, "train")
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES[:3]}
    adverts = [sites[n].advertise(identities[n], 3) for n in NAMES[:3]]
    a = adverts[2]
    swapped = KeyAdvert(a.site, a.channel_pk, adverts[1].mask_pk, a.signature)
    with pytest.raises(ProtocolViolation, match="round keys of site 'site-2': invalid signature"):
        sites["site-0"].share_keys([adverts[0], adverts[1], swapped], roster, identities["site-0"])


def test_the_site_takes_t_from_its_verified_cohort_not_the_servers_claim():
    identities, roster = make_identities(NAMES)
    rid = RoundId("r", 1, "train")
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES}
    adverts = [sites[n].advertise(identities[n], 2) for n in NAMES]  # the server claims 2
    sites["site-0"].share_keys(adverts, roster, identities["site-0"])
    assert sites["site-0"].threshold == threshold_for(4, 0.66) == 3


def test_a_cohort_below_min_cohort_is_refused():
    identities, roster = make_identities(NAMES[:2])
    rid = RoundId("r", 1, "train")
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES[:2]}
    adverts = [sites[n].advertise(identities[n], 2) for n in NAMES[:2]]
    with pytest.raises(RoundAbandoned, match="below its min_cohort=3"):
        sites["site-0"].share_keys(adverts, roster, identities["site-0"])
