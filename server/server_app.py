"""Flower ServerApp: composes the config and hands the grid to the federation runner."""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from task.config import compose_config, overrides_from_run_config


def make_server_app(overrides: Sequence[str] | None = None) -> ServerApp:
    """A ServerApp; ``overrides=None`` reads them from the run config (deployment)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        args = overrides if overrides is not None else overrides_from_run_config(context.run_config)
        run_federation(compose_config(args), grid)

    return app


app = make_server_app()
