"""How often a site's Flower processes look again for what they wait on.

Flower's SuperNode loop sleeps 3 s whenever the SuperLink had no message for it and 0.5 s
between its looks for a ClientApp's reply; a ClientApp (and the SuperNode) that asks for a
message's objects before they arrived backs off from 1 s, doubling to 10 s. These are
waits, not work: in a secure round every message waits for all sites' replies to the one
before, so they add up to most of a deployed round. Here they are shortened in this process
only, through the names Flower's code reads them from; each function refuses (RuntimeError)
a Flower that no longer reads them there, rather than silently keeping the long waits.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

#: Seconds between the SuperNode's requests for a message while it has none.
POLL_INTERVAL = 0.2
#: Seconds between its looks for a ClientApp's finished reply (Flower: 0.5).
REPLY_POLL = 0.05
#: The idle wait Flower's loop asks for; any other wait is a reply or object wait.
FLOWER_IDLE_WAIT = 3
#: First and largest wait before asking again for an object not yet there (Flower: 1, 10).
PULL_BACKOFF, PULL_BACKOFF_CAP = 0.02, 0.5


def pacing(poll_interval: float) -> SimpleNamespace:
    """A stand-in for the ``time`` module of Flower's SuperNode loop, which uses it only to
    sleep: its idle wait becomes ``poll_interval``, its other waits at most ``REPLY_POLL``."""

    def sleep(seconds: float) -> None:
        time.sleep(poll_interval if seconds >= FLOWER_IDLE_WAIT else min(seconds, REPLY_POLL))

    return SimpleNamespace(sleep=sleep)


def pace_supernode(poll_interval: float = POLL_INTERVAL) -> None:
    """Make this process's Flower SuperNode loop poll every ``poll_interval`` seconds."""
    from flwr.supernode import start_client_internal as loop

    if getattr(loop, "time", None) is not time:
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer sleeps through its module's "
            "`time`; client.pacing cannot set its poll interval for this Flower version"
        )
    loop.time = pacing(poll_interval)


def pace_object_pulls(first: float = PULL_BACKOFF, cap: float = PULL_BACKOFF_CAP) -> None:
    """Start the back-off of this process's object pulls at ``first`` seconds, capped at
    ``cap`` (the keyword defaults of Flower's pull functions, which every caller uses)."""
    from flwr.supercore.inflatable import inflatable_utils as pulls

    for fn in (pulls.pull_objects, pulls.pull_and_inflate_object_from_tree):
        defaults = fn.__kwdefaults__ or {}
        if not {"initial_backoff", "backoff_cap"} <= set(defaults):
            raise RuntimeError(
                f"flwr's {fn.__name__} no longer takes initial_backoff / backoff_cap; "
                "client.pacing cannot pace object pulls for this Flower version"
            )
        defaults.update(initial_backoff=first, backoff_cap=cap)
