"""The deployed ServerApp's grid: every reply collected, a short wait between looks."""

from __future__ import annotations

import time
import types

from server.polling_grid import PollingGrid


class SlowSites:
    """A grid whose replies arrive one per pull, after ``delay`` pulls."""

    def __init__(self, delay: int) -> None:
        self.delay, self.pulls, self.answered = delay, [], []

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls.append(time.monotonic())
        if len(self.pulls) <= self.delay:
            return []
        mid = sorted(ids)[0]
        self.answered.append(mid)
        return [types.SimpleNamespace(metadata=types.SimpleNamespace(reply_to_message_id=mid))]

    def get_node_ids(self):
        return [1, 2, 3]


def test_every_reply_is_collected_with_short_waits_between_looks() -> None:
    sites = SlowSites(delay=2)
    grid = PollingGrid(sites, interval=0.05)
    replies = list(grid.send_and_receive(["a", "b", "c"], timeout=None))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    gaps = [b - a for a, b in zip(sites.pulls, sites.pulls[1:], strict=False)]
    assert len(sites.pulls) == 5 and all(0.04 <= g < 1.0 for g in gaps)  # Flower's waits 3 s
    assert grid.get_node_ids() == [1, 2, 3]  # everything else is the grid's own


def test_a_timeout_returns_what_came() -> None:
    sites = SlowSites(delay=10**6)
    t0 = time.monotonic()
    assert list(PollingGrid(sites, interval=0.05).send_and_receive(["a"], timeout=0.3)) == []
    assert time.monotonic() - t0 < 1.0
