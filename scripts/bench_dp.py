"""Privacy against utility, one run, side by side: ``python -m scripts.bench_dp``.

PneumoniaMNIST, 3 simulated sites, secure aggregation on, δ = 1e-5, the default rounds:
test AUC, ACC and MCC at ε ∈ {1, 3, 8} for local DP-SGD (per site, example level; the
``local_dp`` option's own recipe and network, ``dp_scatternet``) and for central DP (site
level, noise on the secure sum; the default network), and at ε = ∞ (no DP, the default
network); each DP run's round time as a ratio to the non-private run's (so for local DP
the ratio also compares two networks). Writes ``bench_dp.json`` with the machine's facts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts.bench_federated import _federated
from task.constants import REPO_ROOT
from task.machine import machine_facts
from task.report import write_benchmark

EPSILONS = (1.0, 3.0, 8.0)
DELTA = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_dp")
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--modes", nargs="+", default=["local_dp", "central_dp"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["secure=smpc", "logger=none", *args.overrides]

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


if __name__ == "__main__":
    main()
