"""Is :mod:`scripts.sim_engine`'s patch of Flower's simulation engine still worth having?

The same short default federation (secure aggregation on) is simulated with the patch and
with Flower's own fixed 0.1 s wait, alternating (patched, Flower's, patched, Flower's) so
that a drift of the machine's speed falls on both; each figure is the better of its runs.
The patch is kept only while it saves time on the installed Flower release.

    python -m scripts.bench_sim_engine [--rounds 8] [--out outputs/bench_sim_engine]
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import flwr
from hydra.core.global_hydra import GlobalHydra

from scripts import simulation
from task.config import compose_config
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts


def one_run(overrides: list[str], run_dir: Path, patched: bool) -> dict:
    """Seconds per round of one simulated federation, with or without the patch."""
    GlobalHydra.instance().clear()
    cfg = compose_config(overrides)
    keep = simulation.message_polling if patched else (lambda _interval: nullcontext())
    with mock.patch.object(simulation, "message_polling", keep):
        m = simulation.simulate(cfg, overrides, run_dir)
    return {
        "seconds_per_round": m["rounds_seconds"] / m["rounds_run"],
        "test_auc": m["test"]["auc"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_sim_engine"))
    args = parser.parse_args(argv)
    overrides = [f"federation.num_rounds={args.rounds}", "logger=none"]
    runs: dict[str, list[dict]] = {"patched": [], "flower": []}
    for i in range(2):
        for name in runs:
            run_dir = (args.out / f"{name}-{i}").resolve()
            runs[name].append(one_run(overrides, run_dir, patched=name == "patched"))
    best = {k: min(r["seconds_per_round"] for r in v) for k, v in runs.items()}
    result = {
        "machine": machine_facts(),
        "flwr": flwr.__version__,
        "overrides": overrides,
        "runs": runs,
        "best_seconds_per_round": best,
        "ratio_patched_to_flower": best["patched"] / best["flower"],
        "same_test_auc": len({r["test_auc"] for v in runs.values() for r in v}) == 1,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {k: result[k] for k in ("flwr", "best_seconds_per_round", "ratio_patched_to_flower")}
    write_benchmark(result, args.out / "bench_sim_engine.json", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
