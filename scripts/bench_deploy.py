"""What a deployed message costs a site, side by side: ``python -m scripts.bench_deploy``.

(a) Process start-up per message kind: a fresh interpreter importing what the handler of
    that kind imports (``client.client_app`` for the key stages, plus ``client.local`` for
    train and evaluate), median of ``--repeats``; with ``--baseline REF`` the same import
    in a git worktree of REF (before the key stages were made light), in the same run; and
    the warm executor's fork of an already-imported process.
(b) Deployed rounds: ``scripts.deploy_local`` (SuperLink, SuperNodes, TLS, node auth,
    secure aggregation) with the warm executor and with Flower's cold process per message,
    same settings, seconds per round and their ratio.
Writes ``bench_deploy.json`` with the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scripts.bench_secagg import _baseline_tree
from task.constants import REPO_ROOT
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts

KINDS = {
    "key stage (advertise, share, consistency, unmask)": "import client.client_app",
    "train / evaluate": "import client.client_app, client.local",
}


def _import_seconds(statement: str, tree: Path, repeats: int) -> float:
    """Median wall time of a fresh interpreter running ``statement`` in ``tree``."""
    times = []
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], cwd=tree, env=env, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fork_seconds(repeats: int) -> float:
    """Median time to fork this (imported) process and reap the child: what the warm
    executor pays per message before Flower's runner starts."""
    import client.local  # noqa: F401 (the executor's warm state)

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def startup(repeats: int, baseline: Path | None) -> dict:
    result = {
        kind: {"cold_seconds": _import_seconds(statement, REPO_ROOT, repeats)}
        for kind, statement in KINDS.items()
    }
    if baseline is not None:  # before: every message's process imported everything
        before = _import_seconds("import client.client_app", baseline, repeats)
        for kind in KINDS:
            result[kind]["before_seconds"] = before
            result[kind]["ratio_to_before"] = result[kind]["cold_seconds"] / before
    fork = _fork_seconds(repeats)
    for kind in KINDS:
        result[kind]["warm_fork_seconds"] = fork
    return result


def deployed(rounds: int, out: Path, overrides: list[str]) -> dict:
    """The same deployment warm and cold; seconds per round and the ratio."""
    runs = {}
    for mode in ("warm", "cold"):
        workdir = out / f"deploy_{mode}"
        cmd = [sys.executable, "-m", "scripts.deploy_local", "--rounds", str(rounds)]
        cmd += ["--workdir", str(workdir), *(["--cold"] if mode == "cold" else []), *overrides]
        subprocess.run(cmd, cwd=REPO_ROOT, check=True)
        runs[mode] = json.loads((workdir / "deployment.json").read_text())
    runs["cold_over_warm"] = runs["cold"]["seconds_per_round"] / runs["warm"]["seconds_per_round"]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_deploy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="a git ref: its start-up beside this code's")
    parser.add_argument("--skip-deploy", action="store_true")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the deployments")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    baseline = _baseline_tree(args.baseline, args.out) if args.baseline else None
    result = {"machine": machine_facts(), "a_startup": startup(args.repeats, baseline)}
    if not args.skip_deploy:
        overrides = ["logger=none", *args.overrides]
        result["b_deployed"] = deployed(args.rounds, args.out, overrides)
    write_benchmark(result, args.out / "bench_deploy.json", result)


if __name__ == "__main__":
    main()
