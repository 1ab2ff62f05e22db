"""Federated rounds for :mod:`scripts.bench_device`: 3 simulated sites with secure aggregation
against the same 3 sites' local training as plain loops in this process.

The federation is the real one (:func:`scripts.simulation.simulate`: Flower's simulation,
the ServerApp and ClientApps, SMPC secure aggregation, the sites' validation and the server's
test), run for ``rounds`` rounds of ``federation.local_steps`` batches per site. Its first
round also holds the site workers' imports and data loading, which a deployment pays once;
later rounds are what a long federation pays per round: both are reported.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra

from scripts.bench_device_loops import Workload, load_data, plain_images_per_s, project_model
from scripts.simulation import simulate
from task.config import compose_config
from task.constants import HISTORY_FILE

SITES = 3
#: Each site's training share holds its local steps twice over, after its validation part.
DATA_MARGIN = 2


def _overrides(work: Workload, rounds: int) -> list[str]:
    return [
        *work.overrides(SITES * work.batch * work.steps * DATA_MARGIN),
        "secure=smpc",
        f"federation.num_sites={SITES}",
        f"federation.num_rounds={rounds}",
        f"federation.local_steps={work.steps}",
        f"train.precision={work.precision}",
        "metrics.n_bootstrap=0",
    ]


def _plain_site_images_per_s(work: Workload) -> float:
    """The plain loop on the federation's network, in this process."""
    GlobalHydra.instance().clear()
    cfg, data = load_data(work, work.batch * (work.steps + work.warmup))
    model = project_model(cfg, data, work.device)
    fed_cfg = compose_config(_overrides(work, 1))
    return plain_images_per_s(work, model, data, fed_cfg.optimizer)


def _round_figures(seconds: float, images: int, plain: float) -> dict:
    ips = images / seconds
    return {"seconds": seconds, "images_per_s": ips, "ratio_to_plain": ips / plain}


def federated(work: Workload, out: Path, rounds: int) -> dict:
    """``rounds`` simulated rounds and the plain loops' images/s: per round, their ratio."""
    overrides = _overrides(work, rounds)
    GlobalHydra.instance().clear()
    cfg = compose_config(overrides)
    run_dir = out / f"federated_{work.model}"
    metrics = simulate(cfg, overrides, run_dir)
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    plain = _plain_site_images_per_s(work)
    images = SITES * work.steps * work.batch  # trained per round, all sites together
    first, last = history[0], history[-1]
    result = {
        "overrides": overrides,
        # The simulation gives its sites no GPU: they train on the CPU whatever --device is.
        "sites_device": "cpu",
        "plain_loop_device": str(work.device),
        "images_per_round": images,
        "plain_images_per_s": plain,
        "rounds_seconds": metrics["rounds_seconds"],
        "first_round": _round_figures(first["seconds"], images, plain)
        | {"secure_seconds": first.get("secure_seconds")},
        "last_round": _round_figures(last["seconds"], images, plain)
        | {"secure_seconds": last.get("secure_seconds"), "round": len(history)},
    }
    result["target_ratio_at_least_0.8"] = {
        "first_round": result["first_round"]["ratio_to_plain"] >= 0.8,
        "last_round": result["last_round"]["ratio_to_plain"] >= 0.8,
    }
    return result
