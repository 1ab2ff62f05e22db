"""A real deployment on this machine: ``python -m scripts.deploy_local [--sites 3] ...``.

Makes a private CA and TLS certificate for the SuperLink, one SuperNode key per site
(registered with the SuperLink; an unknown node is refused), writes each site's images to
its own folder, starts one SuperLink and one SuperNode per site on 127.0.0.1, runs this
app with ``flwr run``, prints the federation's test metrics, and stops everything it
started. Extra arguments are Hydra overrides for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hydra.utils import instantiate

from server.deployment import DeploymentError, LocalDeployment
from server.identities import provision_identities
from task.config import compose_config
from task.constants import DATA_ENV_VAR, METRICS_FILE, REPO_ROOT
from task.data.export import export_sites
from task.data.pneumoniamnist import resolve_path
from task.report import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO_ROOT / "outputs" / "deploy" / time.strftime("%Y%m%d-%H%M%S"),
    )
    parser.add_argument(
        "--limit-per-site",
        type=int,
        default=None,
        help="write at most this many images per site (quick runs)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no SuperNode authentication (local experiments only)",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. strategy=fedprox")
    args = parser.parse_args(argv)

    cfg = compose_config(args.overrides)
    workdir = args.workdir.resolve()
    # The ServerApp runs from the installed FAB, not this checkout: give it the data path.
    os.environ.setdefault(DATA_ENV_VAR, str(resolve_path(cfg.data.get("path"))))
    folders = export_sites(
        workdir / "sites",
        instantiate(cfg.partition),
        args.sites,
        cfg.seed,
        limit_per_site=args.limit_per_site,
    )
    run_dir = workdir / "run"
    overrides = [
        *args.overrides,
        f"federation.num_sites={args.sites}",
        f"federation.num_rounds={args.rounds}",
        f"run_dir={run_dir}",
    ]
    names = [f"site-{i}" for i in range(args.sites)]
    secure_nodes: dict[str, dict[str, str]] = {name: {} for name in names}
    roster = provision_identities(cfg, workdir / "identities", names)
    if roster is not None:
        overrides.append(f"secure.roster={roster}")
        for name in names:
            key_path = roster.parent / f"{name}.key"
            secure_nodes[name] = {"identity-key": str(key_path), "roster": str(roster)}
    if args.insecure:
        print("WARNING: --insecure: no TLS, no SuperNode authentication", file=sys.stderr)
    with LocalDeployment(workdir, insecure=args.insecure) as dep:
        try:
            dep.start_superlink()
            for i, folder in enumerate(folders):
                name = f"site-{i}"
                key = None
                if not args.insecure:
                    key, public = dep.new_node_key(name)
                    dep.register(public)
                node = {
                    "site-name": name,
                    "data-path": str(folder),
                    "partition-id": str(i),
                    "state-dir": str(workdir / "sites" / name),
                }
                dep.start_supernode(name, node | secure_nodes[name], key)
            t0 = time.perf_counter()
            res = dep.run_app(overrides, timeout=args.timeout)
            seconds = time.perf_counter() - t0
        except DeploymentError as err:
            print(f"deployment failed: {err}\nlogs: {workdir / 'logs'}", file=sys.stderr)
            return 1
    metrics_path = run_dir / METRICS_FILE
    if res.returncode != 0 or not metrics_path.is_file():
        print(
            f"flwr run failed (exit {res.returncode}); logs in {workdir / 'logs'}\n"
            f"{res.stdout[-3000:]}{res.stderr[-2000:]}",
            file=sys.stderr,
        )
        return 1
    metrics = json.loads(metrics_path.read_text())
    summary = {
        "workdir": str(workdir),
        "sites": args.sites,
        "rounds": metrics["rounds_run"],
        "flwr_run_seconds": seconds,
        "seconds_per_round": seconds / metrics["rounds_run"],
        "secure": metrics.get("secure"),
        "test": {k: metrics["test"][k] for k in ("auc", "accuracy", "mcc")},
    }
    write_json(summary, workdir / "deployment.json")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
