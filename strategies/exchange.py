"""Secure aggregation's stages as Flower messages: send, collect, accept; and the masking.

Each key stage is a ``query.secagg`` message to every node in the stage and its reply. A
node that fails, or whose answer the protocol refuses, is dropped from the round with a
warning naming it; the protocol then decides whether enough sites remain. The masking
stage rides on the round's train / evaluate message instead (:func:`with_shares`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from mpc.secagg import wire
from mpc.secagg.errors import SecAggError
from mpc.secagg.server import ServerSession

log = logging.getLogger(__name__)


def send(
    grid: Grid,
    stage: str,
    requests: dict[int, dict[str, Any]],
    timeout: float,
    names: dict[int, str],
) -> dict[int, Message]:
    """Send each node its request's record fields; {node: reply} of those that answered
    without an error (``names`` name the sites in warnings)."""
    messages = [
        Message(
            content=RecordDict({wire.RECORD: ConfigRecord(record)}),
            message_type=wire.MESSAGE_TYPE,
            dst_node_id=node,
        )
        for node, record in requests.items()
    ]
    replies = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            site = names.get(node, f"node {node}")
            log.warning("secure %s: %s dropped: %s", stage, site, reply.error.reason)
            continue
        replies[node] = reply
    missing = set(requests) - set(replies)
    if missing:
        log.warning("secure %s: %d site(s) did not answer", stage, len(missing))
    return replies


def accept_each(
    stage: str,
    targets: dict[int, str],
    replies: dict[int, Message],
    accept: Callable[[int, str, ConfigRecord], None],
) -> None:
    """Pass each reply's record to ``accept(node, site, record)``; a site whose answer
    the protocol refuses is dropped with a warning."""
    for node, reply in replies.items():
        try:
            accept(node, targets[node], reply.content.config_records[wire.RECORD])
        except (SecAggError, KeyError, ValueError) as err:
            log.warning("secure %s: %s refused: %s", stage, targets[node], err)


def with_shares(msg: Message, session: ServerSession, site: str) -> Message:
    """``msg`` (the site's train / evaluate message) with the ciphertexts addressed to
    ``site`` and the cohort's commitments."""
    content = RecordDict(dict(msg.content.items()))
    ciphertexts, commitments = session.shares_for(site)
    fields = wire.blobs_fields(ciphertexts) | wire.commitments_fields(commitments)
    content[wire.RECORD] = ConfigRecord(wire.round_record(session.round_id, "mask", **fields))
    return Message(
        content=content,
        message_type=msg.metadata.message_type,
        dst_node_id=msg.metadata.dst_node_id,
    )
