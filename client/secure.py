"""The site's side of secure aggregation: a query handler for the key stages and a mod.

The mod wraps the ordinary train / evaluate handlers (as Flower's DP client mods do): before
the handler runs it authenticates the shares other sites sent; after it, it turns the
plaintext reply into one masked vector (``weights x examples``, example count,
``metric x examples``, summed counts). Per-site ratios (AUC, accuracy, MCC) never leave
the site unless its node config sets ``share-site-metrics = true``. With ``secure=smpc`` in
its config a site refuses to answer any train or evaluate message in the clear.

The server cannot look inside a masked vector, so the site checks its own update before
encoding it (:func:`check_before_encoding`): every tensor of the global model with its
shape and dtype, finite values, an L2 norm of ``weights - global`` within
``federation.max_update_norm`` when that is set, a positive example count, and every encoded
value inside the fixed-point range. A failing update is not clipped: the site refuses to
send it, raising :class:`~task.federation.update_check.UpdateRejected`, and the server counts
the error reply. (Under ``privacy=central_dp`` the update was clipped to
``privacy.clip_norm`` before the noise was added; the bound applies to what is sent, noise
included.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from omegaconf import DictConfig

from client.policy import DEFAULT, SitePolicy, site_policy
from mpc.secagg import wire, work
from mpc.secagg.errors import ProtocolViolation
from mpc.secagg.fixedpoint import bound, pack
from mpc.secagg.identity import load_identity_file, load_roster
from mpc.secagg.protocol import DEFAULT_MIN_COHORT, MaskShares, RoundId
from mpc.secagg.site import SiteSession
from task.constants import DECLINE_RECORD, SITE_LEVEL_METRICS, SITE_RECORD
from task.federation.node import site_name
from task.federation.update_check import (
    UpdateRejected,
    check_range,
    check_update,
    check_weight,
    validate_max_norm,
)

IDENTITY_KEY, ROSTER, SHARE_SITE_METRICS = "identity-key", "roster", "share-site-metrics"


def _roster_path(cfg: DictConfig, node: dict) -> Path:
    path = node.get(ROSTER) or cfg.secure.get("roster")
    if not path:
        raise ValueError(f"no roster: set '{ROSTER}' in the node config or secure.roster")
    return Path(str(path))


def _identity_path(cfg: DictConfig, node: dict, name: str) -> Path:
    if IDENTITY_KEY in node:
        return Path(str(node[IDENTITY_KEY]))
    # Simulation: the launcher writes <site>.key beside the roster.
    return _roster_path(cfg, node).parent / f"{name}.key"


def _identity(cfg: DictConfig, node: dict):
    return load_identity_file(_identity_path(cfg, node, site_name(node)))


def _load(context: Context, rid: RoundId, stage: str) -> SiteSession:
    """The open session of ``rid``'s kind, which must be ``rid``'s round."""
    record = context.state.config_records.get(wire.STATE)
    if record is None or rid.kind not in record:
        raise ProtocolViolation(f"no secure {rid.kind} session open at this site")
    session = SiteSession.from_bytes(bytes(record[rid.kind]))
    if session.round_id != rid:
        raise ProtocolViolation(f"{stage} request for {rid}, open session is {session.round_id}")
    return session


def _save(context: Context, session: SiteSession) -> None:
    record = context.state.config_records.get(wire.STATE) or ConfigRecord()
    record[session.round_id.kind] = session.to_bytes()
    context.state[wire.STATE] = record


def check_before_encoding(
    request: Message,
    reply: Message,
    entries: dict[str, tuple[np.ndarray, int]],
    *,
    site: str,
    max_norm: float | None,
    max_parties: int,
) -> None:
    """Refuse (raise :class:`UpdateRejected`) an update that must not leave this site.

    ``entries`` are the values about to be encoded (``weights x examples``, counts,
    ``metric x examples``) with their fractional bits. The model weights are checked
    against the global model of ``request``; every entry against the fixed-point range
    that keeps the sum of ``max_parties`` sites from overflowing.
    """
    arrays = reply.content.array_records.get("arrays")
    if arrays is not None:
        # The FedAvg weight of a model update: positive (evaluation counts may be zero).
        metrics = next(iter(reply.content.metric_records.values()))
        check_weight(metrics["num-examples"], site=site)
        reference = request.content.array_records.get("arrays")
        if reference is None:
            raise UpdateRejected(site, "the request carries no global model to check against")
        check_update(
            {k: a.numpy() for k, a in arrays.items()},
            {k: a.numpy() for k, a in reference.items()},
            site=site,
            max_norm=max_norm,
        )
    for name, (value, frac_bits) in entries.items():
        check_range(name, value, bound(frac_bits, max_parties), site=site)


def _new_session(cfg: DictConfig, node: dict, rid: RoundId, selected: int):
    """A fresh session of ``rid`` and its signed round keys."""
    session = SiteSession(
        site_name(node),
        rid,
        float(cfg.secure.threshold),
        min_cohort=int(cfg.secure.get("min_cohort", DEFAULT_MIN_COHORT)),
    )
    return session, session.advertise(_identity(cfg, node), selected)


def _share(session: SiteSession, request, cfg: DictConfig, node: dict) -> dict:
    shared = session.share_keys(
        wire.adverts_of(request),
        load_roster(_roster_path(cfg, node)),
        _identity(cfg, node),
        work=wire.digest_of(request),
        setup=work.setup_digest(cfg),
    )
    return wire.blobs_fields(shared.ciphertexts) | wire.commitment_fields(shared.commitment)


def _consistency(session: SiteSession, request, cfg: DictConfig, node: dict) -> dict:
    return {"signature": session.sign_survivors(_identity(cfg, node), *wire.lists_of(request))}


def _unmask(session: SiteSession, request, cfg: DictConfig, node: dict) -> dict:
    survivors, dropped = wire.lists_of(request)
    roster = load_roster(_roster_path(cfg, node))
    shares = session.unmask(survivors, dropped, wire.signatures_of(request), roster)
    return wire.blobs_fields(shares)


#: The key stages that continue an open session: each answers with its record's fields.
_CONTINUED = {"share": _share, "consistency": _consistency, "unmask": _unmask}


def _encode(reply: Message, frac_bits: int, site: str):
    """The values to mask (``weights x examples``, counts, ``metric x examples``) with
    their fractional bits, and the per-site ratios that stay at the site by default."""
    metrics = next(iter(reply.content.metric_records.values()))
    n = metrics["num-examples"]
    if not isinstance(n, int):  # a float count (or NaN) would be truncated silently
        raise UpdateRejected(site, f"num-examples={n!r} is not an integer")
    entries: dict[str, tuple[np.ndarray, int]] = {}
    arrays = reply.content.array_records.get("arrays")
    for key, array in arrays.items() if arrays is not None else []:
        entries[wire.ARRAYS + key] = (array.numpy().astype(np.float64) * n, frac_bits)
    site_level = {}
    for key, value in metrics.items():
        if key in SITE_LEVEL_METRICS:
            site_level[key] = value
        elif key == "num-examples" or isinstance(value, list):
            entries[wire.METRICS + key] = (np.asarray(value, dtype=np.float64), 0)
        else:
            entries[wire.METRICS + key] = (np.float64(value) * n, frac_bits)
    return entries, site_level


def _masked_reply(
    msg: Message,
    reply: Message,
    session: SiteSession,
    cfg: DictConfig,
    name: str,
    share_site_metrics: bool,
) -> Message:
    """The plaintext ``reply``, checked (:func:`check_before_encoding`), encoded and
    masked: one vector and its layout, the site record, and the site's own ratios only
    where ``share_site_metrics``."""
    frac_bits, max_parties = int(cfg.secure.frac_bits), int(cfg.secure.max_parties)
    max_norm = validate_max_norm(cfg.get("federation", {}).get("max_update_norm"))
    entries, site_level = _encode(reply, frac_bits, name)
    check_before_encoding(
        msg, reply, entries, site=name, max_norm=max_norm, max_parties=max_parties
    )
    vector, layout = pack(entries, max_parties=max_parties)
    masked, layout_fields = wire.masked_records(session.masked_input(vector), layout)
    arrays = ArrayRecord({"masked": Array(masked)})
    content = RecordDict({wire.MASKED: arrays, wire.LAYOUT: ConfigRecord(layout_fields)})
    if SITE_RECORD in reply.content.config_records:
        content[SITE_RECORD] = reply.content.config_records[SITE_RECORD]
    if share_site_metrics and site_level:
        content[wire.SITE_METRICS] = MetricRecord(site_level)
    return Message(content=content, reply_to=msg)


def make_secure(
    get_cfg: Callable[[Context], DictConfig],
    default_policy: SitePolicy = DEFAULT,
):
    """``(query_handler, mod)`` for a ClientApp whose config comes from ``get_cfg``; a
    site's own ratios leave it only where its policy (:mod:`client.policy`) or its node
    config's ``share-site-metrics`` allows."""

    def query(msg: Message, context: Context) -> Message:
        cfg, node = get_cfg(context), dict(context.node_config)
        if not wire.secure_enabled(cfg):
            raise ProtocolViolation("secure aggregation request, but secure=none at this site")
        request = msg.content.config_records[wire.RECORD]
        rid, stage = wire.round_id_of(request), str(request["stage"])
        following = None
        if stage == "advertise":
            session, advert = _new_session(cfg, node, rid, int(request["selected"]))
            out = wire.advert_record(advert)
        elif stage in _CONTINUED:
            session = _load(context, rid, stage)
            out = _CONTINUED[stage](session, request, cfg, node)
        else:
            raise ProtocolViolation(f"unknown secure aggregation stage {stage!r}")
        nxt = wire.next_of(request, rid) if stage == "unmask" else None
        if nxt is not None:  # the next round's keys: they need nothing of its work
            following, advert = _new_session(cfg, node, *nxt)
            out |= wire.advert_record(advert)
        _save(context, session)
        if following is not None:  # after this round's: a next round of its kind replaces it
            _save(context, following)
        return Message(content=RecordDict({wire.RECORD: ConfigRecord(out)}), reply_to=msg)

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        cfg, node = get_cfg(context), dict(context.node_config)
        request = msg.content.config_records.get(wire.RECORD)
        if request is None:
            if wire.secure_enabled(cfg):
                raise ProtocolViolation(
                    "secure=smpc at this site: refusing to send an update or counts in the clear"
                )
            return call_next(msg, context)
        session = _load(context, wire.round_id_of(request), "mask")
        # The work must be what the server committed to and every site of the cohort
        # signed the same; then the shares must authenticate. Any failing stops the site
        # before training, its session left where no later stage can release a share.
        session.check_work(work.work_digest(msg.content))
        shares = MaskShares(wire.blobs_of(request), wire.commitments_of(request))
        session.receive_shares(shares, load_roster(_roster_path(cfg, node)))
        reply = call_next(msg, context)
        if reply.has_error() or DECLINE_RECORD in reply.content.config_records:
            return reply  # a decline carries no update or count: nothing to mask
        allowed = site_policy(node, default_policy).share_site_metrics
        allowed = allowed or bool(node.get(SHARE_SITE_METRICS, False))
        masked = _masked_reply(msg, reply, session, cfg, site_name(node), allowed)
        _save(context, session)
        return masked

    return query, mod
