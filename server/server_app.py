"""Flower ServerApp: composes the config and hands the grid to the federation runner."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.deployment_grid import DeploymentGrid
from server.federation import run_federation
from task.config import compose_config, overrides_from_run_config


def make_server_app(
    overrides: Sequence[str] | None = None, *, pull_interval: float | None = None
) -> ServerApp:
    """A ServerApp; ``overrides=None`` reads them from the run config (deployment).

    ``pull_interval`` (seconds) replaces the grid's wait between looks for replies, where
    the grid has one (the simulation's ``InMemoryGrid``: 0.1 s by default, which costs a
    round up to 0.1 s after the last site has replied, for training and again for
    evaluation). ``None`` keeps the grid's own.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if pull_interval is not None:
            if not hasattr(grid, "pull_interval"):
                raise TypeError(f"{type(grid).__name__} has no pull_interval to set")
            grid.pull_interval = pull_interval
        elif not hasattr(grid, "pull_interval"):  # a deployment: Flower's grid waits 3 s
            grid = DeploymentGrid(grid)
        args = overrides if overrides is not None else overrides_from_run_config(context.run_config)
        run_federation(compose_config(args), grid)

    return app


app = make_server_app()
