"""A deployed ServerApp's grid that looks for replies every fraction of a second.

Flower 1.41's deployment grid (``HttpGrid.send_and_receive``) sleeps a fixed 3 s between
looks for replies, with no setting: each stage of a secure round (ten a round) so waits up
to 3 s after its last site has answered. This grid keeps Flower's own, and replaces only
that loop with the same one built on the grid's public ``push_messages`` and
``pull_messages`` and a shorter wait.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

#: Seconds between looks for replies in a deployment (a pull is one small request).
DEPLOY_PULL_INTERVAL = 0.1


class PollingGrid:
    """``grid`` with ``send_and_receive`` polling every ``interval`` seconds; every other
    call goes to ``grid`` itself."""

    def __init__(self, grid: Grid, interval: float = DEPLOY_PULL_INTERVAL) -> None:
        self._grid, self.interval = grid, interval

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages`` and collect their replies until all came or ``timeout``."""
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            received = list(self._grid.pull_messages(pending))
            replies.extend(received)
            pending -= {msg.metadata.reply_to_message_id for msg in received}
            if pending:
                time.sleep(self.interval)
        return replies
