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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import instantiate

from client.policy import POLICY_KEY
from scripts.local_deployment import DeploymentError, LocalDeployment, given_tls
from server.identities import provision_identities
from task.config import compose_config
from task.constants import DATA_ENV_VAR, METRICS_FILE, REPO_ROOT
from task.data.export import export_sites
from task.data.pneumoniamnist import resolve_path
from task.evaluation.report import write_json


@dataclass
class SiteFederation:
    """What a local deployment needs to start its sites and submit runs."""

    workdir: Path
    overrides: list[str]  # Hydra overrides of every run (sites, rounds, run_dir, roster)
    nodes: dict[str, dict[str, str]]  # node config per site name
    run_dir: Path
    keys: dict[str, Path | None] = field(default_factory=dict)  # SuperNode private keys


def prepare_sites(
    workdir: Path,
    sites: int,
    rounds: int,
    overrides: list[str],
    *,
    limit_per_site: int | None = None,
    run_dir: Path | None = None,
    site_policy: Path | None = None,
) -> SiteFederation:
    """Write each site's PNGs to its own folder, make the secure-aggregation identities
    and the node configs; nothing is started. ``site_policy``: the policy file every
    site's node config names (None: the default policy, which requires secure=smpc)."""
    cfg = compose_config(overrides)
    workdir = workdir.resolve()
    # The ServerApp runs from the installed FAB, not this checkout: give it the data path.
    os.environ.setdefault(DATA_ENV_VAR, str(resolve_path(cfg.data.get("path"))))
    folders = export_sites(
        workdir / "sites",
        instantiate(cfg.partition),
        sites,
        cfg.seed,
        limit_per_site=limit_per_site,
    )
    run_dir = run_dir or workdir / "run"
    run_overrides = [
        *overrides,
        f"federation.num_sites={sites}",
        f"federation.num_rounds={rounds}",
        f"run_dir={run_dir}",
    ]
    names = [f"site-{i}" for i in range(sites)]
    roster = provision_identities(cfg, workdir / "identities", names)
    if roster is not None:
        run_overrides.append(f"secure.roster={roster}")
    nodes = {}
    for i, (name, folder) in enumerate(zip(names, folders, strict=True)):
        nodes[name] = {
            "site-name": name,
            "data-path": str(folder),
            "partition-id": str(i),
            # Apart from the images: the state (ledger, site log, data cache) is the site's own.
            "state-dir": str(workdir / "state" / name),
        }
        if site_policy is not None:
            nodes[name][POLICY_KEY] = str(Path(site_policy).resolve())
        if roster is not None:
            nodes[name] |= {
                "identity-key": str(roster.parent / f"{name}.key"),
                "roster": str(roster),
            }
    return SiteFederation(workdir, run_overrides, nodes, run_dir)


def start_sites(dep: LocalDeployment, fed: SiteFederation) -> None:
    """Register one SuperNode key per site (unless insecure) and start its SuperNode."""
    for name, node in fed.nodes.items():
        key = None
        if not dep.insecure:
            key, public = dep.new_node_key(name)
            dep.register(public)
        fed.keys[name] = key
        dep.start_supernode(name, node, key)


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--tls-dir",
        type=Path,
        default=None,
        help="the SuperLink's TLS files from your PKI (ca.pem, superlink.pem, superlink.key); "
        "default: a private CA made in the workdir",
    )
    parser.add_argument(
        "--site-policy",
        type=Path,
        default=None,
        help="every site's policy file (client/policy.py); default: the default policy "
        "(secure aggregation required, threshold >= 0.66, cohort >= 3)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="Flower's own fresh ClientApp process per message, without the warm executor",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. strategy=fedprox")
    return parser


def _run(
    args: argparse.Namespace, fed: SiteFederation
) -> tuple[subprocess.CompletedProcess, float] | None:
    """Start the SuperLink and the sites, run the app; returns ``flwr run``'s completed
    process and its seconds, or None when the deployment failed (after saying so)."""
    with LocalDeployment(
        fed.workdir,
        insecure=args.insecure,
        tls_dir=args.tls_dir,
        warm=not args.cold,
        # The sites share this machine's cores, as the simulation's sites do.
        site_threads=max(1, (os.cpu_count() or 1) // args.sites),
    ) as dep:
        try:
            dep.start_superlink()
            start_sites(dep, fed)
            t0 = time.perf_counter()
            res = dep.run_app(fed.overrides, timeout=args.timeout)
            return res, time.perf_counter() - t0
        except DeploymentError as err:
            print(f"deployment failed: {err}\nlogs: {fed.workdir / 'logs'}", file=sys.stderr)
            return None


def _summary(args: argparse.Namespace, workdir: Path, metrics: dict, seconds: float) -> dict:
    """What ``deployment.json`` records and the launcher prints."""
    return {
        "workdir": str(workdir),
        "sites": args.sites,
        "rounds": metrics["rounds_run"],
        "flwr_run_seconds": seconds,
        "seconds_per_round": seconds / metrics["rounds_run"],
        "secure": metrics.get("secure"),
        "clientapps": "cold" if args.cold else "warm",
        "test": {k: metrics["test"][k] for k in ("auc", "accuracy", "mcc")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.insecure and args.tls_dir is not None:
        parser.error("--insecure and --tls-dir contradict each other")
    if args.tls_dir is not None:  # refuse before anything is written or started
        try:
            given_tls(args.tls_dir)
        except DeploymentError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    fed = prepare_sites(
        args.workdir,
        args.sites,
        args.rounds,
        args.overrides,
        limit_per_site=args.limit_per_site,
        site_policy=args.site_policy,
    )
    workdir, run_dir = fed.workdir, fed.run_dir
    if args.insecure:
        print("WARNING: --insecure: no TLS, no SuperNode authentication", file=sys.stderr)
    ran = _run(args, fed)
    if ran is None:
        return 1
    res, seconds = ran
    metrics_path = run_dir / METRICS_FILE
    if res.returncode != 0 or not metrics_path.is_file():
        print(
            f"flwr run failed (exit {res.returncode}); logs in {workdir / 'logs'}\n"
            f"{res.stdout[-3000:]}{res.stderr[-2000:]}",
            file=sys.stderr,
        )
        return 1
    summary = _summary(args, workdir, json.loads(metrics_path.read_text()), seconds)
    write_json(summary, workdir / "deployment.json")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
