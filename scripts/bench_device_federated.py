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

from scripts.bench_device_loops import Workload
from scripts.simulation import simulate
from task.config import compose_config
from task.constants import HISTORY_FILE

SITES = 3
#: Each site's training share holds its local steps twice over, after its validation part.
DATA_MARGIN = 2
#: Fewest images in all: each site's validation part (a tenth) must hold both classes.
MIN_IMAGES = 24 * SITES


def _overrides(work: Workload, rounds: int) -> list[str]:
    return [
        *work.overrides(max(SITES * work.batch * work.steps * DATA_MARGIN, MIN_IMAGES)),
        "secure=smpc",
        f"device={work.device}",
        f"federation.num_sites={SITES}",
        f"federation.num_rounds={rounds}",
        f"federation.local_steps={work.steps}",
        f"train.precision={work.precision}",
        "metrics.n_bootstrap=0",
    ]


def _round_figures(entry: dict, plain: float) -> dict:
    """A history entry's seconds and trained images (all sites), against the plain loop."""
    images, seconds = entry["train"].get("num-examples"), entry["seconds"]
    if not images:
        raise RuntimeError(f"round {entry['round']} trained nothing: {entry.get('failures')}")
    ips = images / seconds
    return {
        "seconds": seconds,
        "images": images,
        "images_per_s": ips,
        "ratio_to_plain": ips / plain,
        "secure_seconds": entry.get("secure_seconds"),
        "phase_seconds": entry.get("phase_seconds"),
    }


def federated(work: Workload, out: Path, rounds: int, plain: float) -> dict:
    """``rounds`` simulated rounds against ``plain``, the plain loop's images/s on the same
    network, batch and precision in this process (:func:`centralised`'s): the sites' local
    steps run one after the other at that speed, and each round's ratio is to it."""
    overrides = _overrides(work, rounds)
    GlobalHydra.instance().clear()
    cfg = compose_config(overrides)
    run_dir = out / f"federated_{work.model}"
    metrics = simulate(cfg, overrides, run_dir)
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    result = {
        "overrides": overrides,
        # Ray shows the sites a GPU only where this device is CUDA (simulation.site_gpus).
        "sites_device": str(work.device),
        "plain_loop_device": str(work.device),
        "plain_images_per_s": plain,
        "rounds_seconds": metrics["rounds_seconds"],
        "first_round": _round_figures(history[0], plain),
        "last_round": _round_figures(history[-1], plain) | {"round": len(history)},
    }
    result["target_ratio_at_least_0.8"] = {
        "first_round": result["first_round"]["ratio_to_plain"] >= 0.8,
        "last_round": result["last_round"]["ratio_to_plain"] >= 0.8,
    }
    return result
