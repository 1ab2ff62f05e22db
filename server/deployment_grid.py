"""A deployed ServerApp's grid: short waits for replies, and each message's arrays packed.

Flower's deployment grid (``HttpGrid.send_and_receive``, 1.41 and 1.42 alike) sleeps a
fixed 3 s between looks for replies, with no setting: each stage of a secure round (ten a
round) so waits up to 3 s after its last site has answered. This grid keeps Flower's own,
and replaces only that loop with the same one built on the grid's public
``push_messages`` and ``pull_messages`` and a shorter wait.

It also sends each multi-array record as one array and a layout (:mod:`task.federation.transport`):
Flower would make each tensor an object that every site fetches in a request of its own.
The sites' ClientApp restores the record before anything reads it
(:mod:`client.transport`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from task.federation.transport import LAYOUTS, PACKED, pack

#: Seconds between looks for replies in a deployment (a pull is one small request).
DEPLOY_PULL_INTERVAL = 0.1


def packed_content(content: RecordDict) -> RecordDict:
    """``content`` with every array record of more than one array packed into one."""
    records = dict(content.items())
    layouts = {}
    for name, record in content.array_records.items():
        if len(record) > 1:
            blob, layouts[name] = pack(record)
            records[name] = ArrayRecord({PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})
    if not layouts:
        return content
    if LAYOUTS in records:
        raise ValueError(f"a message already holds a record named {LAYOUTS!r}")
    records[LAYOUTS] = ConfigRecord(layouts)
    return RecordDict(records)


def packed(messages: Iterable[Message]) -> list[Message]:
    """The messages with packed content (one packing per distinct content: a strategy
    often gives every site the same ``RecordDict``)."""
    by_content: dict[int, RecordDict] = {}
    out = []
    for msg in messages:
        key = id(msg.content)
        if key not in by_content:
            by_content[key] = packed_content(msg.content)
        if by_content[key] is msg.content:
            out.append(msg)
            continue
        meta = msg.metadata
        out.append(
            Message(
                content=by_content[key],
                dst_node_id=meta.dst_node_id,
                message_type=meta.message_type,
                ttl=meta.ttl,
                group_id=meta.group_id,
            )
        )
    return out


class DeploymentGrid:
    """``grid`` packing what it pushes, with ``send_and_receive`` polling every
    ``interval`` seconds; every other call goes to ``grid`` itself."""

    def __init__(self, grid: Grid, interval: float = DEPLOY_PULL_INTERVAL) -> None:
        self._grid, self.interval = grid, interval

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(packed(messages))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and collect their replies until all came or ``timeout``."""
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            received = list(self._grid.pull_messages(pending))
            replies.extend(received)
            pending -= {msg.metadata.reply_to_message_id for msg in received}
            if pending:
                time.sleep(self.interval)
        return replies
