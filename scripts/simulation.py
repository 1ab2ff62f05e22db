"""Run a federation of simulated sites on this machine with Flower's simulation runtime.

The same ServerApp and ClientApp as a deployment, built with the composed overrides (no run
config is needed). Sites run in Ray workers; ``federation.client_cpus`` CPUs each, and on a
CUDA ``device`` ``federation.client_gpus`` of a GPU each (:func:`site_gpus`). The
engine looks for the server's messages every ``SIM_PULL_INTERVAL`` seconds
(:mod:`scripts.sim_engine`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from client.client_app import make_client_app
from scripts.sim_engine import message_polling
from server.identities import provision_identities
from server.server_app import make_server_app
from task.constants import METRICS_FILE, SIM_PULL_INTERVAL
from task.federation.settings import FederationSettings
from task.runtime.device import resolve_device

# Ray tells, once per run, how a future version will treat accelerator variables when a
# worker asks for no GPU: nothing to act on in a simulation that sets num_gpus itself.
warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)


def flower_logs_once(name: str = "flwr") -> None:
    """Let Flower's log lines reach the console once, through the root logger's handlers.

    Why: Flower's logger prints through a console handler of its own and also propagates to
    the root logger, whose handlers (Hydra's console and run-directory file) print each
    line again. Without root handlers, Flower's own stays.
    """
    if not logging.getLogger().handlers:
        return
    flower = logging.getLogger(name)
    for handler in list(flower.handlers):
        if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler):
            flower.removeHandler(handler)


def site_gpus(cfg: DictConfig) -> tuple[int, float]:
    """The GPUs the simulation's Ray workers may use, and each site's share of one.

    Why: Ray hides every GPU from a worker that asks for none, so simulated sites would
    train on the CPU whatever ``device`` says. Where ``device`` resolves to CUDA here, each
    site asks for ``federation.client_gpus`` of a GPU; ``auto`` shares one GPU among all
    the sites, which then train at once (Ray runs as many as fit).
    """
    share = FederationSettings.from_config(cfg).gpu_share()
    if resolve_device(cfg.device).type != "cuda":
        return 0, 0.0
    return torch.cuda.device_count(), share


def simulate(cfg: DictConfig, overrides: Sequence[str], run_dir: Path) -> dict[str, Any]:
    """Run ``cfg.federation.num_sites`` simulated sites; returns ``metrics.json``."""
    from flwr.simulation import run_simulation

    flower_logs_once()

    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    overrides = [*overrides, f"run_dir={run_dir}"]
    names = [f"site-{i}" for i in range(int(cfg.federation.num_sites))]
    roster = provision_identities(cfg, Path(run_dir) / "identities", names)
    if roster is not None:  # sites find <name>.key beside the roster
        overrides.append(f"secure.roster={roster}")
    cpus, gpus, client_gpus = os.cpu_count() or 1, *site_gpus(cfg)
    with message_polling(SIM_PULL_INTERVAL):
        run_simulation(
            server_app=make_server_app(overrides, pull_interval=SIM_PULL_INTERVAL),
            client_app=make_client_app(overrides),
            num_supernodes=int(cfg.federation.num_sites),
            backend_config={
                "client_resources": {
                    "num_cpus": min(cfg.federation.client_cpus, cpus),
                    "num_gpus": client_gpus,
                },
                "init_args": {
                    "num_cpus": cpus,
                    "num_gpus": gpus,
                    "include_dashboard": False,
                    "logging_level": "error",
                    "log_to_driver": True,
                },
            },
        )
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise RuntimeError(f"the federation ended without writing {path}; see the log above")
    return json.loads(path.read_text())
