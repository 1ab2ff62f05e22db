"""A shorter wait in Flower's simulation engine between looks for new messages.

Why: Flower's simulation runtime (1.41 and 1.42 alike) moves the ServerApp's messages to
the simulated sites from a thread (``vce_api.add_messages_to_queue``) that looks into the
link state, then waits a fixed 0.1 s (``f_stop.wait(0.1)``, no setting). Every stage of
every round (training, evaluation and each secure-aggregation stage) so waits about 0.05 s
on average before its first site starts. ``python -m scripts.bench_sim_engine`` measures
what that costs on the installed release, with this patch and without it, so that the
patch goes as soon as Flower no longer needs it. This module swaps that thread's function
for the same loop with the wait the simulation's grid already uses for replies
(``SIM_PULL_INTERVAL``), for as long as a simulation runs, and puts Flower's back
afterwards.

It touches a private function of the Flower minor version pinned in pyproject.toml, so it
checks that function's parameters first and refuses, naming what changed, if they differ.
Deployments (SuperLink, SuperNodes) do not use this engine and are not affected.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Queue
from typing import Any

#: The parameters of ``vce_api.add_messages_to_queue`` (unchanged from Flower 1.41 to 1.42).
EXPECTED_PARAMETERS = ("state", "queue", "nodes_mapping", "f_stop")


def _engine():
    from flwr.server.superlink.fleet.vce import vce_api

    return vce_api


def polling_loop(interval: float):
    """Flower's message-moving loop, with ``interval`` seconds between looks."""
    if not interval > 0:
        raise ValueError(f"simulation poll interval {interval!r} must be positive")

    def add_messages_to_queue(
        state: Any, queue: Queue, nodes_mapping: dict, f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(interval)

    return add_messages_to_queue


@contextmanager
def message_polling(interval: float) -> Iterator[None]:
    """While the block runs, the simulation engine looks for new messages every
    ``interval`` seconds instead of Flower's 0.1 s."""
    engine = _engine()
    original = engine.add_messages_to_queue
    found = tuple(inspect.signature(original).parameters)
    if found != EXPECTED_PARAMETERS:
        raise RuntimeError(
            f"flwr's vce_api.add_messages_to_queue takes {found}, not {EXPECTED_PARAMETERS}: "
            "this Flower version's simulation engine is not the one scripts/sim_engine.py "
            "was written for"
        )
    engine.add_messages_to_queue = polling_loop(interval)
    try:
        yield
    finally:
        engine.add_messages_to_queue = original
