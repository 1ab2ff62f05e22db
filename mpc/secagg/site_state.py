"""A site's secure aggregation session as bytes, between the messages of a round.

A deployed site answers each stage in a fresh process, so the session (its round keys,
the shares it holds, what it signed) is saved in Flower's ``Context.state`` and read back
at the next stage. Reading trusts nothing: a corrupt or tampered state is refused with
:class:`~mpc.secagg.protocol.MalformedMessage`, never half-loaded.
"""

from __future__ import annotations

import json
from typing import Any

from mpc.secagg.protocol import DIGEST_BYTES, STAGES, KeyAdvert, MalformedMessage, RoundId

_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)


def dump(session: Any) -> bytes:
    """``session`` (a :class:`~mpc.secagg.site.SiteSession`) as JSON bytes."""

    def adv(a: KeyAdvert) -> list[str]:
        return [a.site, a.channel_pk.hex(), a.mask_pk.hex(), a.signature.hex()]

    keys = (session.channel_sk, session.channel_pk, session.mask_sk, session.mask_pk)
    state = {
        "name": session.name,
        "round_id": [session.round_id.run, session.round_id.round, session.round_id.kind],
        "fraction": session.fraction,
        "min_cohort": session.min_cohort,
        "claimed": session.claimed,
        "work": session.work.hex(),
        "digest": session.digest.hex(),
        "signed": session.signed,
        "keys": [k.hex() for k in keys],
        "peers": [adv(a) for a in session.peers.values()],
        "received": {k: [a.hex(), b.hex()] for k, (a, b) in session.received.items()},
        "self_seed": session.self_seed.hex(),
        "cohort": session.cohort,
        "stage": session.stage,
    }
    return json.dumps(state).encode()


def load(cls: type, data: bytes) -> Any:
    """The ``cls`` session that :func:`dump` saved; :class:`MalformedMessage` if corrupt."""
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
    except _DECODE_ERRORS as err:
        raise MalformedMessage(
            f"saved secure aggregation session is corrupt ({type(err).__name__}: {err})"
        ) from None
    _check_types(session)
    return session


def _check_types(session: Any) -> None:
    def refuse(what: str) -> None:
        raise MalformedMessage(f"saved secure aggregation session is corrupt: {what}")

    rid = session.round_id
    if not (isinstance(session.name, str) and isinstance(rid.run, str)):
        refuse("site or run name is not text")
    if type(rid.round) is not int or not isinstance(rid.kind, str):
        refuse(f"round id {rid} is not (text, integer, text)")
    if type(session.fraction) not in (int, float) or not 0.0 < session.fraction <= 1.0:
        refuse(f"threshold fraction {session.fraction!r:.40}")
    for what in ("claimed", "min_cohort"):
        if type(getattr(session, what)) is not int or getattr(session, what) < 0:
            refuse(f"{what} {getattr(session, what)!r:.40}")
    if len(session.work) != DIGEST_BYTES or len(session.digest) != DIGEST_BYTES:
        refuse("round digest is not 32 bytes")
    if not all(isinstance(c, str) for part in session.signed for c in part):
        refuse("signed survivor list names are not text")
    if session.stage not in ("new", *STAGES):
        refuse(f"stage {session.stage!r:.40} is not one of {('new', *STAGES)}")
    if not all(isinstance(c, str) for c in session.cohort):
        refuse("cohort names are not text")
