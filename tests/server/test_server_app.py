"""The ServerApp adapter: what it sets on the grid before handing it to the federation."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict

from server import server_app
from server.server_app import make_server_app


class _PollingGrid:
    """Stands in for Flower's InMemoryGrid, which waits ``pull_interval`` between looks."""

    pull_interval = 0.1


def _context() -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


def test_pull_interval_is_on_the_grid_when_the_federation_starts(monkeypatch) -> None:
    seen = {}
    monkeypatch.setattr(
        server_app, "run_federation", lambda cfg, grid: seen.update(interval=grid.pull_interval)
    )
    make_server_app(["logger=none"], pull_interval=0.01)(_PollingGrid(), _context())
    assert seen == {"interval": 0.01}
    make_server_app(["logger=none"])(grid := _PollingGrid(), _context())
    assert seen == {"interval": 0.1} and grid.pull_interval == 0.1  # None keeps the grid's


def test_pull_interval_on_a_grid_without_one_is_refused_by_name(monkeypatch) -> None:
    monkeypatch.setattr(server_app, "run_federation", lambda cfg, grid: None)
    with pytest.raises(TypeError, match="object has no pull_interval"):
        make_server_app(["logger=none"], pull_interval=0.01)(object(), _context())
