"""A site's Flower processes wait less between looks, and refuse a Flower they cannot pace."""

from __future__ import annotations

import argparse
import inspect
import time

import pytest
from flwr.supercore.inflatable import inflatable_utils as pulls
from flwr.supernode import start_client_internal as loop

from client import pacing, supernode


def test_pacing_shortens_flowers_idle_and_reply_waits(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    paced = pacing.pacing(0.2)
    paced.sleep(3)  # Flower's idle wait
    paced.sleep(0.5)  # its wait for a ClientApp's reply
    paced.sleep(0.01)
    assert slept == [0.2, pacing.REPLY_POLL, 0.01]


def test_pace_supernode_replaces_the_loops_clock(monkeypatch):
    monkeypatch.setattr(loop, "time", time)
    pacing.pace_supernode(0.3)
    assert loop.time is not time
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    loop.time.sleep(3)
    assert slept == [0.3]


def test_pace_supernode_refuses_a_loop_that_no_longer_sleeps_through_time(monkeypatch):
    monkeypatch.delattr(loop, "time")
    with pytest.raises(RuntimeError, match="no longer sleeps"):
        pacing.pace_supernode(0.2)


def test_flowers_loop_still_asks_for_the_idle_wait_that_pacing_recognises():
    # A Flower upgrade that changed the wait would slip past pacing's `>= 3` test.
    source = inspect.getsource(loop.start_client_internal)
    assert f"time.sleep({pacing.FLOWER_IDLE_WAIT})" in source


def test_object_pulls_retry_sooner_after_pacing(monkeypatch):
    for fn in (pulls.pull_objects, pulls.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(fn, "__kwdefaults__", dict(fn.__kwdefaults__))
    asked: list[float] = []
    unavailable = 3

    def pull(object_id: str) -> bytes:
        asked.append(time.monotonic())
        if len(asked) <= unavailable:
            raise pulls.ObjectUnavailableError(object_id)
        return b"content"

    pacing.pace_object_pulls(first=0.01, cap=0.02)
    t0 = time.monotonic()
    assert pulls.pull_objects(["a"], pull) == {"a": b"content"}
    # Flower's own back-off (1 s, 2 s, 4 s) would take about 7 s for three misses.
    assert time.monotonic() - t0 < 1.0 and len(asked) == unavailable + 1


def test_pace_object_pulls_refuses_a_flower_without_the_back_off_keywords(monkeypatch):
    monkeypatch.setattr(pulls.pull_objects, "__kwdefaults__", {"max_time": 1.0})
    with pytest.raises(RuntimeError, match="pull_objects"):
        pacing.pace_object_pulls()


@pytest.mark.parametrize("text", ["0", "-1", "3.5"])
def test_poll_interval_out_of_range_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"--poll-interval {text}"):
        supernode.positive_seconds(text)
