"""The simulation engine's shorter wait between looks for new messages."""

from __future__ import annotations

import threading
import time
from queue import Queue

import pytest
from flwr.server.superlink.fleet.vce import vce_api

from scripts import sim_engine


class _State:
    """A link state holding messages for its nodes (the engine asks one per node a look)."""

    def __init__(self, pending: dict[int, list[str]]) -> None:
        self.pending = pending
        self.looks = 0

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        self.looks += 1
        out, self.pending[node_id] = self.pending[node_id][:limit], self.pending[node_id][limit:]
        return out


def test_the_loop_moves_every_message_and_stops_on_the_event() -> None:
    state, queue, stop = _State({1: ["a", "b"], 2: ["c"]}), Queue(), threading.Event()
    loop = sim_engine.polling_loop(0.005)
    thread = threading.Thread(target=loop, args=(state, queue, {1: 0, 2: 1}, stop))
    thread.start()
    deadline = time.monotonic() + 5
    while queue.qsize() < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert sorted(queue.get_nowait() for _ in range(3)) == ["a", "b", "c"]


def _looks(interval: float, seconds: float = 0.3) -> int:
    """How often the loop looks for messages in ``seconds`` with none pending."""
    state, stop = _State({1: [], 2: []}), threading.Event()
    thread = threading.Thread(
        target=sim_engine.polling_loop(interval), args=(state, Queue(), {1: 0, 2: 1}, stop)
    )
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(timeout=5)
    return state.looks


def test_the_interval_sets_how_often_the_engine_looks() -> None:
    """0.005 s between looks against Flower's 0.1 s (the control): many times as many
    looks in the same time; the loop ignoring its interval would fail one side."""
    fast, slow = _looks(0.005), _looks(0.1)
    assert slow <= 2 * 4  # 2 nodes, at most 4 passes in 0.3 s at 0.1 s
    assert fast >= 3 * slow


def test_flowers_loop_is_swapped_for_the_block_and_put_back() -> None:
    original = vce_api.add_messages_to_queue
    with sim_engine.message_polling(0.01):
        assert vce_api.add_messages_to_queue is not original
        assert vce_api.add_messages_to_queue.__qualname__.startswith("polling_loop")
    assert vce_api.add_messages_to_queue is original
    with pytest.raises(KeyError), sim_engine.message_polling(0.01):
        raise KeyError("the simulation failed")
    assert vce_api.add_messages_to_queue is original


def test_another_flower_engine_is_refused_by_name(monkeypatch) -> None:
    monkeypatch.setattr(vce_api, "add_messages_to_queue", lambda state, queue: None)
    with (
        pytest.raises(RuntimeError, match="add_messages_to_queue takes"),
        sim_engine.message_polling(0.01),
    ):
        pass


@pytest.mark.parametrize("interval", [0, -1.0])
def test_a_bad_interval_is_refused(interval) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        sim_engine.polling_loop(interval)
