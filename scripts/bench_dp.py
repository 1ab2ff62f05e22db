"""Privacy against utility, one run, side by side: ``python -m scripts.bench_dp``.

PneumoniaMNIST, 3 simulated sites, secure aggregation on, δ = 1e-5, the default rounds:
test AUC, ACC and MCC at ε ∈ {1, 3, 8} for local DP-SGD (per site, example level; the
``local_dp`` option's own recipe and network, ``dp_scatternet``) and for central DP (site
level, noise on the secure sum; the default network), and at ε = ∞ (no DP, the default
network); each DP run's round time as a ratio to the non-private run's (so for local DP
the ratio also compares two networks). Writes ``bench_dp.json`` with the machine's facts.

``--seeds 0 1 2 3 4`` runs each mode and ε once per seed instead and gives the spread of
the test metrics under both selection rules (``bench_dp_seeds.json``); the non-private
spread is ``bench_federated --seeds``'s IID one (the same configuration).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from scripts.bench_federated import _federated
from scripts.seed_spread import federated_seed, load_data, summarise
from task.constants import REPO_ROOT
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts

EPSILONS = (1.0, 3.0, 8.0)
DELTA = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_dp")
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--modes", nargs="+", default=["local_dp", "central_dp"])
    parser.add_argument("--seeds", type=int, nargs="+", help="the spread over these seeds")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["secure=smpc", "logger=none", *args.overrides]
    if args.seeds:
        seed_spread(args, common)
        return

    runs: list[dict] = []
    baseline = _federated([*common, "privacy=none"], args.out / "no_dp")
    runs.append({"mode": "none", "epsilon": None, **baseline, "time_ratio": 1.0})
    for mode in args.modes:
        for eps in args.epsilons:
            overrides = [*common, f"privacy={mode}", f"privacy.epsilon={eps}"]
            overrides.append(f"privacy.delta={DELTA}")
            result = _federated(overrides, args.out / f"{mode}_eps{eps:g}")
            runs.append(
                {
                    "mode": mode,
                    "epsilon": eps,
                    **result,
                    "time_ratio": result["rounds_seconds"] / baseline["rounds_seconds"],
                }
            )
    table = [
        {
            "mode": r["mode"],
            "epsilon": r["epsilon"] if r["epsilon"] is not None else "inf",
            **{k: round(v, 4) for k, v in r["test"].items()},
            "time_ratio": round(r["time_ratio"], 2),
        }
        for r in runs
    ]
    at3 = [r for r in runs if r["mode"] == "local_dp" and r["epsilon"] == 3.0]
    result = {
        "machine": machine_facts(),
        "delta": DELTA,
        "runs": runs,
        "table": table,
        "target": {
            "local_dp_auc_at_eps3": at3[0]["test"]["auc"] if at3 else None,
            "met": bool(at3) and at3[0]["test"]["auc"] >= 0.95,
        },
    }
    write_benchmark(
        result, args.out / "bench_dp.json", {"table": table, "target": result["target"]}
    )


def seed_spread(args, common: list[str]) -> None:
    """Every mode and ε once per seed; the spread of each under both selection rules."""
    t0 = time.perf_counter()
    result: dict = {"machine": machine_facts(), "delta": DELTA, "seeds": args.seeds, "runs": []}
    for mode in args.modes:
        data = load_data([*common, f"privacy={mode}"])  # local_dp has its own transforms
        for eps in args.epsilons:
            rows = []
            for seed in args.seeds:
                overrides = [*common, f"seed={seed}", f"privacy={mode}"]
                overrides += [f"privacy.epsilon={eps}", f"privacy.delta={DELTA}"]
                run_dir = args.out / f"{mode}_eps{eps:g}" / f"seed{seed}"
                rows.append({"seed": seed, **federated_seed(overrides, run_dir, data)})
            result["runs"].append(
                {
                    "mode": mode,
                    "epsilon": eps,
                    "runs": rows,
                    "val_mcc": summarise(rows, "val_mcc"),
                    "last": summarise(rows, "last"),
                }
            )
    result["wall_seconds"] = time.perf_counter() - t0
    summary = [
        {
            "mode": r["mode"],
            "epsilon": r["epsilon"],
            "auc": {"val_mcc": r["val_mcc"]["auc"], "last": r["last"]["auc"]},
        }
        for r in result["runs"]
    ]
    write_benchmark(result, args.out / "bench_dp_seeds.json", summary)


if __name__ == "__main__":
    main()
