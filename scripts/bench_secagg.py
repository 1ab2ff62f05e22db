"""Secure aggregation benchmark, one run, side by side: ``python -m scripts.bench_secagg``.

(a) Protocol cost without Flower, on vectors of the real models' size (default model and
    ResNet-18), at 3, 5 and 10 sites: seconds per site (encode + mask) and at the server
    (unmask + decode), bytes sent per site per round against plaintext float32.
    Also the cost of hashing a round's work (the digest every site signs and checks) and
    the messages of each stage.
(b) Round wall time of Flower simulations with ``secure=smpc`` against ``secure=none`` at
    3, 5 and 10 sites (same seed, same local work): the median over the rounds after the
    first (which also loads every site's data); ``--models`` picks the models. With
    ``--baseline REF`` (a git commit), also ``secure=smpc`` as the code at REF ran it (a
    git worktree under ``--out``), in the same run: the cost of the checks against an
    active server.
(c) With ``--full``: the default federation (all rounds) with and without secure
    aggregation, same seed: test AUC, ACC, MCC and their differences.
Writes ``bench_secagg.json`` with the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from mpc.secagg.fixedpoint import pack
from mpc.secagg.reference import plaintext_sum, secure_sum, shared_round
from mpc.secagg.work import work_digest
from task.config import compose_config
from task.constants import DATA_ENV_VAR, REPO_ROOT
from task.data.pneumoniamnist import resolve_path
from task.evaluation.report import write_benchmark
from task.models.factory import build_model, count_parameters
from task.runtime.machine import machine_facts

SITES = (3, 5, 10)
MODELS = {"default": [], "resnet18": ["model=resnet18"]}


def _protocol_cost(model_overrides: list[str], n_sites: int) -> dict:
    cfg = compose_config(["secure=none", *model_overrides])
    model = build_model(cfg.model, (1, 28, 28), 2)
    state = model.state_dict()
    rng = np.random.default_rng(0)
    inputs, t_encode = {}, 0.0
    for i in range(n_sites):
        t0 = time.perf_counter()
        entries = {k: (v.double().numpy() * 500, 32) for k, v in state.items()}
        vector, _ = pack(entries)
        t_encode += time.perf_counter() - t0
        inputs[f"site-{i}"] = vector + rng.integers(0, 2**16, vector.size, dtype=np.uint64)
    t0 = time.perf_counter()
    result = secure_sum(inputs)
    protocol = time.perf_counter() - t0
    if not np.array_equal(result.total, plaintext_sum(inputs)):
        raise RuntimeError("secure sum differs from the plaintext sum")
    server = result.server
    content = RecordDict(
        {"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": 1})}
    )
    t0 = time.perf_counter()
    work_digest(content)
    hashing = time.perf_counter() - t0
    # The consistency stage's work at one site: sign the lists, verify every survivor's.
    keyed = shared_round(sorted(inputs))
    for name, site in keyed.sites.items():
        site.receive_shares(keyed.server.shares_for(name), keyed.roster)
        keyed.server.receive_masked(name, site.masked_input(np.zeros(4, dtype=np.uint64)))
    t0 = time.perf_counter()
    keyed.unmask()
    consistency = (time.perf_counter() - t0) / n_sites
    n = sum(p.numel() for p in state.values())
    share_bytes = max(
        sum(len(b) for b in p.values()) for st, _, p in server.transcript if st == "share"
    )
    return {
        "parameters": count_parameters(model),
        "values_per_site": n,
        "encode_seconds_per_site": t_encode / n_sites,
        # Each site hashes its work once a secure sum (train and evaluate each round), and
        # the server once for all.
        "work_digest_seconds": hashing,
        # Consistency stage and unmask at one site (signing, verifying n signatures, and
        # the unmask it did before), in process.
        "consistency_and_unmask_seconds_per_site": consistency,
        # Replies the server received at each stage of one secure sum (a query each; the
        # mask stage rides on the train / evaluate message itself).
        "messages_per_stage": dict(Counter(st for st, _, _ in server.transcript)),
        # In-process driver: every site's and the server's work, run one after the other.
        "protocol_seconds_all_sites_and_server": protocol,
        "bytes_per_site": {
            "masked_vector_uint64": int(result.total.nbytes),
            "encrypted_shares": int(share_bytes),
            "plaintext_float32": int(4 * n),
            "ratio": (result.total.nbytes + share_bytes) / (4 * n),
        },
    }


def _baseline_tree(ref: str, out: Path) -> Path:
    """A git worktree of ``ref`` under ``out`` (made once)."""
    tree = (out / f"baseline-{ref}").resolve()
    if not tree.exists():
        subprocess.run(["git", "worktree", "prune"], cwd=REPO_ROOT, check=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), ref],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
    return tree


def _simulate(overrides: list[str], run_dir: Path, tree: Path = REPO_ROOT) -> dict:
    """``python -m scripts.train`` of the code in ``tree``, in a fresh process each."""
    env = os.environ | {DATA_ENV_VAR: str(resolve_path(None).resolve())}
    run_dir = run_dir.resolve()  # the baseline runs in another working directory
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"simulation in {tree} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    later = [h["seconds"] for h in history[1:]] or [history[-1]["seconds"]]
    return {
        "wall_seconds": time.perf_counter() - t0,
        "round_seconds": [h["seconds"] for h in history],
        "median_round_seconds": float(np.median(later)),
        "test": {k: metrics["test"][k] for k in ("auc", "accuracy", "mcc")},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_secagg")
    parser.add_argument("--models", nargs="*", default=["default"], choices=list(MODELS))
    parser.add_argument("--sites", nargs="*", type=int, default=list(SITES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also (c): full default runs")
    parser.add_argument(
        "--baseline", default=None, help="a git commit whose secure=smpc runs beside ours"
    )
    return parser


def _round_time(name: str, n: int, rounds: int, out: Path, baseline: Path | None) -> dict:
    """(b) for model ``name`` at ``n`` sites: ``secure=smpc`` against ``secure=none`` (and
    against the baseline's ``secure=smpc`` when there is one)."""
    base = [
        "logger=none",
        *MODELS[name],
        f"federation.num_sites={n}",
        f"federation.num_rounds={rounds}",
        "metrics.n_bootstrap=50",
    ]
    runs = {mode: _simulate([*base, f"secure={mode}"], out / mode) for mode in ("none", "smpc")}
    plain, secure = (runs[m]["median_round_seconds"] for m in ("none", "smpc"))
    entry = {**runs, "overhead_fraction": (secure - plain) / plain}
    if baseline is not None:
        before = _simulate([*base, "secure=smpc"], out / "smpc_baseline", baseline)
        old = before["median_round_seconds"]
        entry |= {
            "smpc_baseline": before,
            "baseline_overhead_fraction": (old - plain) / plain,
            "checks_fraction_of_round": (secure - old) / secure,
        }
    return entry


def _full_accuracy(out: Path) -> dict:
    """(c): the default federation with and without secure aggregation."""
    runs = {
        mode: _simulate(["logger=none", f"secure={mode}"], out / f"full-{mode}")
        for mode in ("none", "smpc")
    }
    return {**runs, "auc_difference": runs["smpc"]["test"]["auc"] - runs["none"]["test"]["auc"]}


def main() -> None:
    args = _parser().parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_facts(), "baseline": args.baseline}
    baseline = _baseline_tree(args.baseline, args.out) if args.baseline else None

    result["a_protocol"] = {
        name: {str(n): _protocol_cost(over, n) for n in SITES} for name, over in MODELS.items()
    }
    rounds: dict = {}
    for name in args.models:
        for n in args.sites:
            entry = _round_time(name, n, args.rounds, args.out / f"{name}-{n}", baseline)
            rounds[f"{name}/{n}_sites"] = entry
            print(
                name,
                n,
                "sites:",
                json.dumps({k: v for k, v in entry.items() if "fraction" in k}),
                flush=True,
            )
    result["b_round_time"] = rounds
    if args.full:
        result["c_accuracy"] = _full_accuracy(args.out)
    if baseline is not None:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO_ROOT, check=False
        )
    path = args.out / "bench_secagg.json"
    write_benchmark(result, path, {k: v for k, v in result.items() if k != "machine"})


if __name__ == "__main__":
    main()
