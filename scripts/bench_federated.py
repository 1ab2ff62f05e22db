"""Federated benchmark, one run, side by side: ``python -m scripts.bench_federated``.

(a) 3 sites IID and 3 sites Dirichlet(0.5) against the centralised baseline with the same
    total epochs and seed: test AUC, ACC, MCC;
(b) Flower's overhead: the simulation's round time against the same federation run by the
    same loops without Flower (ratio);
(c) the default federation (secure aggregation on, 36 rounds) simulated with
    ``python -m scripts.train`` and deployed with ``scripts.deploy_local`` (SuperLink, 3
    SuperNodes, TLS, node authentication, warm executors), one after the other: seconds
    per round, whole command, test metrics, their ratio, and where the deployed time goes
    (:mod:`scripts.deploy_profile`: per stage and per process over the whole run, per
    function in a short profiled deployment);
(d) the default ``python -m scripts.train`` (secure aggregation on), run as a command: its
    wall time and test metrics (the simulated run of (c)).
``--deploy-only`` runs (c) and (d) alone.
Writes ``bench_federated.json`` with the machine's facts.

``--seeds 0 1 2 3 4`` runs the seed spread instead (:mod:`scripts.seed_spread`): the default
federation over those seeds for IID and Dirichlet(0.5) sites, with the centralised default
beside it; ``bench_federated_seeds.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from client.executor import PROFILE_DIR
from scripts.deploy_profile import CpuSampler, functions, stages
from scripts.seed_spread import checkpoint_test, run_seeds
from scripts.simulation import simulate
from task.config import compose_config, default_choice
from task.constants import CHECKPOINT_BEST, CHECKPOINT_LAST, REPO_ROOT
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts
from task.training.central import run as run_central

KEYS = ("auc", "accuracy", "mcc")


def _test(m: dict) -> dict:
    return {k: m["test"][k] for k in KEYS}


def _checkpoint_test(cfg, data, path: Path, key: str) -> dict:
    """Test AUC, ACC and MCC of the weights under ``key`` in the checkpoint ``path``."""
    return {"test": checkpoint_test(cfg, data, path, key)}


def _federated(overrides: list[str], run_dir: Path) -> dict:
    GlobalHydra.instance().clear()
    cfg = compose_config(overrides)
    t0 = time.perf_counter()
    m = simulate(cfg, overrides, run_dir)
    return {
        "overrides": overrides,
        "test": _test(m),
        "best_round": m["best_round"],
        "privacy": m.get("privacy"),
        "rounds_seconds": m["rounds_seconds"],
        "wall_seconds": time.perf_counter() - t0,
    }


def _reference(overrides: list[str], out: Path, workers: int | None = None) -> dict:
    """The same federation without Flower, in a fresh process as Flower's site worker;
    ``workers`` sites at a time (None: as the simulation runs them)."""
    cmd = [sys.executable, "-m", "scripts.fedavg_reference", "--out", str(out)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    cmd += overrides
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    return json.loads(out.read_text())


def _simulated(out: Path, rounds: list[str]) -> dict:
    """The default ``python -m scripts.train`` as a user runs it."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "scripts.train", f"hydra.run.dir={out}", *rounds]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True)
    wall = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    per_round = m["rounds_seconds"] / m["rounds_run"]
    return {"command": shlex.join(cmd[1:3]), "wall_seconds": wall, "test": _test(m)} | {
        "rounds": m["rounds_run"],
        "seconds_per_round": per_round,
    }


def _deployed(workdir: Path, rounds: int, env: dict | None = None) -> tuple[dict, CpuSampler]:
    cmd = [sys.executable, "-m", "scripts.deploy_local", "--sites", "3", "--rounds", str(rounds)]
    t0 = time.perf_counter()
    launcher = subprocess.Popen([*cmd, "--workdir", str(workdir)], cwd=REPO_ROOT, env=env)
    sampler = CpuSampler(launcher.pid).start()
    code = launcher.wait()
    sampler.stop()
    if code != 0:
        raise SystemExit(f"scripts.deploy_local failed; logs in {workdir / 'logs'}")
    m = json.loads((workdir / "run" / "metrics.json").read_text())
    result = {"command": shlex.join(cmd[1:]), "wall_seconds": time.perf_counter() - t0}
    result |= {"rounds": m["rounds_run"], "seconds_per_round": m["rounds_seconds"] / rounds}
    return result | {"test": _test(m)}, sampler


def deployed_vs_simulated(out: Path, rounds: int, profile_rounds: int) -> dict:
    """(c): the same default federation simulated and deployed, then a short deployment
    whose message processes write profiles."""
    sim = _simulated(out / "simulated", [f"federation.num_rounds={rounds}"])
    deployed, sampler = _deployed(out / "deploy", rounds)
    profiles = out / "deploy_profiled" / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    env = os.environ | {PROFILE_DIR: str(profiles)}
    _deployed(out / "deploy_profiled", profile_rounds, env)
    ratio = deployed["seconds_per_round"] / sim["seconds_per_round"]
    return {
        "simulated": sim,
        "deployed": deployed,
        "deployed_over_simulated_per_round": ratio,
        "targets": {
            "per_round_at_most_15_s": deployed["seconds_per_round"] <= 15,
            "at_most_5x_simulated": ratio <= 5,
            "whole_run_at_most_10_min": deployed["wall_seconds"] <= 600,
            "test_auc_at_least_0.97": deployed["test"]["auc"] >= 0.97,
        },
        "where_the_time_goes": {
            "median_seconds_per_stage": stages(out / "deploy"),
            "cpu_seconds_per_role": sampler.by_role(),
            "median_seconds_per_step_profiled": functions(profiles),
        },
    }


def _default(c: dict | None, out: Path | None = None) -> dict:
    """(d) the literal default command, as a user runs it: (c)'s simulated run, or run
    here when (c) was skipped."""
    sim = c["simulated"] if c is not None else _simulated(out, [])
    return sim | {
        "under_5_minutes": sim["wall_seconds"] < 300,
        "targets_met": sim["wall_seconds"] < 300
        and sim["test"]["auc"] >= 0.97
        and sim["test"]["accuracy"] >= 0.90,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_federated")
    parser.add_argument("--deploy-rounds", type=int, default=36)
    parser.add_argument("--profile-rounds", type=int, default=3)
    parser.add_argument("--skip-deploy", action="store_true")
    parser.add_argument("--deploy-only", action="store_true", help="(c) and (d) only")
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="the seed spread of the defaults instead"
    )
    return parser


def _central_config(epochs: int) -> DictConfig:
    """The centralised baseline's config, ``epochs`` long."""
    GlobalHydra.instance().clear()
    # Same network and optimiser as the federation (conf/train.yaml's; the federation's
    # adamw_federated also lifts the centralised AUC, 0.976 -> 0.978 in a probe), same
    # epochs and seed.
    return compose_config(
        [
            "logger=none",
            f"model={default_choice('model')}",
            f"optimizer={default_choice('optimizer')}",
            f"train.epochs={epochs}",
            "train.progress=false",
        ],
        config_name="train_central",
    )


def _other_selection_rule(
    cfg: DictConfig, central_cfg: DictConfig, out: Path, fed: dict[str, dict], central: dict
) -> dict:
    """Each side's test metrics under the other side's rule for choosing its weights;
    ``fed``: the federated runs by name (``iid``, ``dirichlet``)."""
    # The two sides choose their tested weights by different rules: the federation its
    # round with the best pooled validation MCC (issue 4), the centralised defaults the last
    # epoch (train.selection=last: the small validation split's MCC picks noisily). Each
    # side under the other's rule too, from the checkpoints both runs write, so that the
    # comparison can be read like for like.
    # Loaded once: both configs compose the same data and transforms groups.
    data = instantiate(cfg.data).load(preprocess=instantiate(cfg.transforms.preprocess))
    other = {
        "central_best_val_mcc": _checkpoint_test(
            central_cfg, data, out / "central" / CHECKPOINT_BEST, "model"
        ),
        "federated_iid_last_round": _checkpoint_test(
            cfg, data, out / "iid" / CHECKPOINT_LAST, "evaluated_arrays"
        ),
        "federated_dirichlet_0.5_last_round": _checkpoint_test(
            cfg, data, out / "dirichlet" / CHECKPOINT_LAST, "evaluated_arrays"
        ),
    }
    c_best = other["central_best_val_mcc"]["test"]["auc"]
    other["auc_difference_vs_central_same_rule"] = {
        "val_mcc": {name: fed[name]["test"]["auc"] - c_best for name in ("iid", "dirichlet")},
        "last": {
            name: other[f"federated_{name}_last_round"]["test"]["auc"] - central["test"]["auc"]
            for name in ("iid", "dirichlet_0.5")
        },
    }
    return other


def accuracy_vs_central(base: list[str], out: Path) -> dict:
    """(a): 3 sites IID and Dirichlet(0.5) against the centralised baseline."""
    iid = _federated(base, out / "iid")
    dirichlet = _federated([*base, "partition=dirichlet", "partition.alpha=0.5"], out / "dirichlet")
    cfg = compose_config(base)
    epochs = cfg.federation.num_rounds * cfg.federation.local_epochs
    central_cfg = _central_config(epochs)
    t0 = time.perf_counter()
    central = run_central(central_cfg, out / "central")
    central_wall = time.perf_counter() - t0
    fed = {"iid": iid, "dirichlet": dirichlet}
    return {
        "central": {"test": _test(central), "epochs": epochs, "wall_seconds": central_wall},
        "federated_iid": iid,
        "federated_dirichlet_0.5": dirichlet,
        "auc_difference_vs_central": {
            name: fed[name]["test"]["auc"] - central["test"]["auc"] for name in fed
        },
        "other_selection_rule": _other_selection_rule(cfg, central_cfg, out, fed, central),
    }


def flower_overhead(base: list[str], out: Path, flower_seconds: float) -> dict:
    """(b): Flower's rounds against the same federation without Flower."""
    # Both sides import the loops, load the sites' data and run every round in fresh
    # processes: Flower's rounds_seconds include the site workers' imports and loading (on
    # their first message), the references' seconds too (scripts.fedavg_reference). Two
    # references: the sites as the simulation runs them (cpus // client_cpus at a time,
    # client_cpus threads each, in worker processes), and one site at a time in one
    # process with every thread. The ratio is taken against the faster of the two.
    as_simulated = _reference(base, out / "fedavg_reference.json")
    one_process = _reference(base, out / "fedavg_reference_one_process.json", workers=1)
    fastest = min(as_simulated, one_process, key=lambda r: r["seconds"])
    return {
        "flower_rounds_seconds": flower_seconds,
        "without_flower_as_simulated": as_simulated,
        "without_flower_one_process": one_process,
        "without_flower_seconds": fastest["seconds"],
        "ratio": flower_seconds / fastest["seconds"],
        "ratio_as_simulated": flower_seconds / as_simulated["seconds"],
        "ratio_one_process": flower_seconds / one_process["seconds"],
    }


def _write(result: dict, path: Path) -> None:
    write_benchmark(result, path, {k: v for k, v in result.items() if k != "machine"})


def _everything(args: argparse.Namespace) -> None:
    """(a) to (d), or (a), (b) and (d) with ``--skip-deploy``: ``bench_federated.json``."""
    # Plaintext aggregation: this benchmark measures Flower; scripts.bench_secagg measures
    # secure aggregation against it.
    base = ["logger=none", "secure=none"]
    result: dict = {"machine": machine_facts()}
    result["a_accuracy"] = accuracy_vs_central(base, args.out)
    iid_seconds = result["a_accuracy"]["federated_iid"]["rounds_seconds"]
    result["b_flower_overhead"] = flower_overhead(base, args.out, iid_seconds)
    c = None
    if not args.skip_deploy:
        c = deployed_vs_simulated(args.out, args.deploy_rounds, args.profile_rounds)
        result["c_deployment"] = c
    result["d_default_train"] = _default(c, args.out / "default_train")
    _write(result, args.out / "bench_federated.json")


def main() -> None:
    args = _parser().parse_args()
    if args.seeds:
        run_seeds(args.seeds, args.out / "seeds")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.deploy_only:  # (c) and (d) alone
        c = deployed_vs_simulated(args.out, args.deploy_rounds, args.profile_rounds)
        result = {"machine": machine_facts(), "c_deployment": c, "d_default_train": _default(c)}
        _write(result, args.out / "bench_federated_deploy.json")
    else:
        _everything(args)


if __name__ == "__main__":
    main()
