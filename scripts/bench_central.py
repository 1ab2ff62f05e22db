"""Centralised baseline benchmark: ``python -m scripts.bench_central [--seeds 0 1 2]``.

Trains the default model for each seed, and ResNet-18 for one seed, on PneumoniaMNIST's
published splits, all in one run, and writes ``bench_central.json`` with the machine's
facts, per-run test AUC / ACC / MCC, wall time and training images/s, their mean and spread,
and the ratio of each figure to the published and human references on the same 624 images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from task.config import register_resolvers
from task.constants import EXPERT_READERS, REPO_ROOT
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts
from task.training.central import run

#: Published and human references on the same 624 test images.
REFERENCES = {
    "medmnist_resnet18_28px": {"auc": 0.944, "accuracy": 0.854},
    "medmnist_resnet50_224px": {"auc": 0.962, "accuracy": 0.884},
    "primia_expert_readers": EXPERT_READERS,
}


def _one(overrides: list[str], run_dir: Path) -> dict:
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train_central", [*overrides, "logger=none", "train.progress=false"])
    t0 = time.perf_counter()
    m = run(cfg, run_dir)
    return {
        "overrides": overrides,
        "auc": m["test"]["auc"],
        "auc_ci": m["test"]["auc_ci"],
        "accuracy": m["test"]["accuracy"],
        "mcc": m["test"]["mcc"],
        "best_epoch": m["best_epoch"],
        "wall_seconds": time.perf_counter() - t0,
        "train_images_per_s": m["train_images_per_s"],
        "parameters": m["model"]["parameters"],
    }


def _summary(runs: list[dict]) -> dict:
    out = {}
    for key in ("auc", "accuracy", "mcc", "wall_seconds", "train_images_per_s"):
        values = [r[key] for r in runs]
        out[key] = {
            "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    out["vs_references"] = {
        name: {k: out[k]["mean"] / v for k, v in ref.items()} for name, ref in REFERENCES.items()
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resnet18-epochs", type=int, default=5)
    parser.add_argument("--skip-resnet18", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_central")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the default runs")
    args = parser.parse_args()
    register_resolvers()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_facts(), "references": REFERENCES, "models": {}}
    default_runs = [
        _one([*args.overrides, f"seed={s}"], args.out / f"default_seed{s}") for s in args.seeds
    ]
    result["default_overrides"] = args.overrides
    result["models"]["default"] = {"runs": default_runs, "summary": _summary(default_runs)}
    if not args.skip_resnet18:
        r18 = [
            _one(
                ["experiment=resnet18", f"train.epochs={args.resnet18_epochs}", "seed=0"],
                args.out / "resnet18_seed0",
            )
        ]
        result["models"]["resnet18"] = {"runs": r18, "summary": _summary(r18)}
        result["resnet18_over_default"] = {
            k: r18[0][k] / result["models"]["default"]["summary"][k]["mean"]
            for k in ("auc", "accuracy", "mcc", "wall_seconds")
        }
    path = args.out / "bench_central.json"
    write_benchmark(result, path, {k: v["summary"] for k, v in result["models"].items()})


if __name__ == "__main__":
    main()
