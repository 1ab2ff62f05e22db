"""The checks against an active server, at the protocol's state machines: signed survivor
lists that cannot be forged, replayed or signed by outsiders; digests bound into the
adverts; the site's own threshold and cohort. The attacks themselves, against the real
ClientApps, are in ``tests/strategies/test_malicious_server.py``."""

from __future__ import annotations

import numpy as np
import pytest

from mpc.secagg import crypto, protocol
from mpc.secagg.errors import ConsistencyError, ProtocolViolation, RoundAbandoned
from mpc.secagg.fixedpoint import encode
from mpc.secagg.protocol import (
    KeyAdvert,
    RoundId,
    ServerSession,
    SiteSession,
    survivor_list_bytes,
    threshold_for,
)
from mpc.secagg.reference import make_identities, plaintext_sum, secure_sum, shared_round

NAMES = ["site-0", "site-1", "site-2", "site-3"]


def _masked(names, round_id=None):
    """A round of ``names`` up to the consistency stage, everyone masked."""
    keyed = shared_round(names, round_id=round_id or RoundId("r", 1, "train"))
    for n, site in keyed.sites.items():
        site.receive_shares(keyed.server.shares_for(n))
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
        server.receive_shares(n, site.share_keys(server.broadcast(), roster))
    for n, site in sites.items():
        site.receive_shares(server.shares_for(n))
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


def test_an_advert_whose_digest_was_changed_in_transit_fails_its_signature():
    identities, roster = make_identities(NAMES[:3])
    rid = RoundId("r", 1, "train")
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES[:3]}
    adverts = [sites[n].advertise(identities[n], 3, work=bytes([7]) * 32) for n in NAMES[:3]]
    a = adverts[2]
    swapped = KeyAdvert(a.site, a.channel_pk, a.mask_pk, a.signature, bytes(32))
    with pytest.raises(ProtocolViolation, match="site 'site-2' carry an invalid signature"):
        sites["site-0"].share_keys([adverts[0], adverts[1], swapped], roster)


def test_the_site_takes_t_from_its_verified_cohort_not_the_servers_claim():
    identities, roster = make_identities(NAMES)
    rid = RoundId("r", 1, "train")
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES}
    adverts = [sites[n].advertise(identities[n], 2) for n in NAMES]  # the server claims 2
    sites["site-0"].share_keys(adverts, roster)
    assert sites["site-0"].threshold == threshold_for(4, 0.66) == 3


def test_a_cohort_below_min_cohort_is_refused():
    identities, roster = make_identities(NAMES[:2])
    rid = RoundId("r", 1, "train")
    sites = {n: SiteSession(n, rid, 0.66) for n in NAMES[:2]}
    adverts = [sites[n].advertise(identities[n], 2) for n in NAMES[:2]]
    with pytest.raises(RoundAbandoned, match="below its min_cohort=3"):
        sites["site-0"].share_keys(adverts, roster)
