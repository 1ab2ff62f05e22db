"""Write benchmark figures into ``docs/results.md``: ``python -m scripts.results_doc``.

Each benchmark's JSON is copied to ``docs/results/`` (committed, so that every figure in
the document can be traced to the run that produced it) and rendered between the
``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers of its section; the rest of the
document is left as it is. Nothing here is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable

from scripts.results_device import device
from task.constants import REPO_ROOT

DOC = REPO_ROOT / "docs" / "results.md"
STORE = REPO_ROOT / "docs" / "results"
OUTPUTS = REPO_ROOT / "outputs"


def _ms(stats: dict) -> str:
    """``mean ± sd (min)`` to three decimals."""
    return f"{stats['mean']:.3f} ± {stats['sd']:.3f} ({stats['min']:.3f})"


def _summary_rows(result: dict) -> list[str]:
    rows = []
    for name, part in result["partitions"].items():
        for rule in ("last", "val_mcc"):
            target = part["targets"][rule]
            rows.append(
                f"| federated, {name} | {rule} | "
                + " | ".join(_ms(part[rule][k]) for k in ("auc", "accuracy", "mcc"))
                + f" | {'met' if target['met'] else 'missed'} |"
            )
    central = result["central"]["test"]
    rows.append(
        "| centralised default | last | "
        + " | ".join(_ms(central[k]) for k in ("auc", "accuracy", "mcc"))
        + " | |"
    )
    return rows


def seed_spread(result: dict) -> str:
    """The default federation over seeds: summary, per-seed table, validation picks."""
    seeds = ", ".join(str(s) for s in result["seeds"])
    lines = [
        f"Seeds {seeds}; `python -m scripts.bench_federated --seeds {seeds.replace(',', '')}`"
        f" ({result['wall_seconds'] / 60:.0f} min, {result['machine']['cores']} cores, "
        f"{result['machine']['cpu']}). Test metrics as mean ± sd (lowest seed); target: "
        "mean AUC ≥ 0.97 and every seed ≥ 0.965.",
        "",
        "| run | rule | test AUC | test ACC | test MCC | AUC target |",
        "| --- | --- | --- | --- | --- | --- |",
        *_summary_rows(result),
        "",
        "Per seed, test AUC (round tested) under each rule, and what the validation-only "
        "rules pick (no test figure is used to pick): the round of the best pooled "
        "validation MCC, of the lowest validation loss, of the best 5-round mean MCC, and "
        "how far the best round's validation MCC lies above the last round's in standard "
        "errors of a correlation, (1 − r²)/√n:",
        "",
        "| partition | seed | AUC, val_mcc (round) | AUC, last | val_loss pick | "
        "smoothed pick | best − last (SE) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, part in result["partitions"].items():
        for run in part["runs"]:
            v = run["validation"]
            lines.append(
                f"| {name} | {run['seed']} | {run['val_mcc']['auc']:.4f} ({run['best_round']}) "
                f"| {run['last']['auc']:.4f} | {v['picks']['val_loss']} | "
                f"{v['picks']['smoothed_val_mcc']} | "
                f"{v['best_above_last_in_standard_errors']:.2f} |"
            )
    central = ", ".join(f"{r['test']['auc']:.4f}" for r in result["central"]["runs"])
    lines += ["", f"Centralised default, test AUC per seed: {central}."]
    return "\n".join(lines)


def dp_spread(result: dict) -> str:
    """Local DP over seeds, per ε, both rules."""
    seeds = " ".join(str(s) for s in result["seeds"])
    lines = [
        f"`python -m scripts.bench_dp --seeds {seeds} --modes "
        + " ".join(sorted({r["mode"] for r in result["runs"]}))
        + " --epsilons "
        + " ".join(f"{e:g}" for e in sorted({r["epsilon"] for r in result["runs"]}))
        + f"` ({result['wall_seconds'] / 60:.0f} min); δ = {result['delta']:g}; "
        "test metrics as mean ± sd (lowest seed):",
        "",
        "| privacy | ε | rule | test AUC | test ACC | test MCC | AUC per seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in result["runs"]:
        for rule in ("last", "val_mcc"):
            per_seed = ", ".join(f"{run[rule]['auc']:.3f}" for run in entry["runs"])
            lines.append(
                f"| {entry['mode']} | {entry['epsilon']:g} | {rule} | "
                + " | ".join(_ms(entry[rule][k]) for k in ("auc", "accuracy", "mcc"))
                + f" | {per_seed} |"
            )
    return "\n".join(lines)


def _stage_rows(stages: dict) -> list[str]:
    return [
        f"| {name} | {parts.get('fetch', 0):.2f} | {parts['process']:.2f} | "
        f"{parts.get('until next message', 0):.2f} |"
        for name, parts in stages.items()
    ]


def deployment(result: dict) -> str:
    """The default federation deployed against simulated, and where the time goes."""
    c = result["c_deployment"]
    sim, dep, where = c["simulated"], c["deployed"], c["where_the_time_goes"]
    machine = result["machine"]
    met = ", ".join(
        f"{k.replace('_', ' ')}: {'met' if v else 'missed'}" for k, v in c["targets"].items()
    )
    lines = [
        f"`python -m scripts.bench_federated --deploy-only` ({machine['cores']} cores, "
        f"{machine['cpu']}; the SuperLink, the ServerApp and all 3 sites on this machine). "
        f"Targets: {met}.",
        "",
        "| run | rounds | s per round | whole command | test AUC | test ACC | test MCC |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in (("simulated", sim), ("deployed", dep)):
        test = run["test"]
        lines.append(
            f"| {name}: `{run['command']}` | {run['rounds']} | {run['seconds_per_round']:.1f} | "
            f"{run['wall_seconds'] / 60:.1f} min | {test['auc']:.3f} | {test['accuracy']:.3f} | "
            f"{test['mcc']:.3f} |"
        )
    lines += [
        "",
        f"Deployed over simulated, per round: {c['deployed_over_simulated_per_round']:.1f}×.",
        "",
        "Median seconds per secure-aggregation stage at a site (the SuperNode's timestamps): "
        "fetching the message, its process, and until the next message came (the other "
        "sites, the coordinator, the polls):",
        "",
        "| stage | fetch | process | until next |",
        "| --- | --- | --- | --- |",
        *_stage_rows(where["median_seconds_per_stage"]),
        "",
        "CPU seconds per role over the whole deployed run: "
        + ", ".join(f"{k} {v:.0f}" for k, v in where["cpu_seconds_per_role"].items())
        + ".",
        "",
        "Median seconds of each step of a message's process (cProfile, in a short profiled "
        "deployment):",
        "",
    ]
    for kind, steps in where["median_seconds_per_step_profiled"].items():
        named = ", ".join(f"{k} {v:.2f}" for k, v in steps.items() if k != "processes")
        lines.append(f"- {kind} ({steps['processes']} processes): {named}")
    return "\n".join(lines)


def inference(result: dict) -> str:
    """``scripts.bench_inference``: TLS against gloo, and the service path."""
    lines = [
        f"`python -m scripts.bench_inference` ({result['machine']['cores']} cores, "
        f"{result['machine'].get('cpu', 'CPU')}; the three parties on this "
        "machine, each in a process of its own). Seconds and bytes per image; the bytes are "
        "CrypTen's count at the data owner, and for TLS also what crossed its sockets.",
        "",
        "| model | transport | batch 1: s / image | batch 32: s / image | batch 1: MB / image "
        "| batch 32: MB / image |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, model in result["models"].items():
        for transport in ("gloo", "tls"):
            one, many = (model["transports"][transport][f"batch{b}"] for b in (1, 32))
            mb = [
                f.get("wire_bytes_per_image", f["crypten_bytes_per_image"]) / 1e6
                for f in (one, many)
            ]
            lines.append(
                f"| {name} | {transport} | {one['seconds_per_image']:.3f} | "
                f"{many['seconds_per_image']:.3f} | {mb[0]:.1f} | {mb[1]:.1f} |"
            )
    lines += [
        "",
        "TLS over gloo, time per image, and the service path (dealer, service, client over TLS):",
        "",
    ]
    for name, model in result["models"].items():
        ratio = model["transports"]["ratio_tls_to_gloo"]
        enc, agree = model["encrypted"], model["agreement"]
        lines.append(
            f"- {name}: TLS/gloo {ratio['batch1']:.2f}× at batch 1, {ratio['batch32']:.2f}× at "
            f"batch 32; through the service {enc['batch1_seconds_per_image']:.2f} s per image at "
            f"batch 1, {enc['batch32_seconds_per_image']:.3f} at batch 32; encrypted and "
            f"plaintext agree on {agree['agreement']:.1%} of {agree['images']} images; targets "
            + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in model["targets_met"].items())
        )
    return "\n".join(lines)


def links(result: dict) -> str:
    """``scripts.bench_links``: what TLS costs per byte on the parties' links."""
    best = result["best"]
    return (
        f"`python -m scripts.bench_links` ({result['machine']['cores']} cores, "
        f"{result['machine'].get('cpu', 'CPU')}; two processes exchanging "
        f"{result['frame_mib']} MiB frames both ways at once). Seconds per GiB sent each way, "
        "the better of two runs:\n\n"
        "| link | wall s / GiB | CPU s / GiB (busier end) |\n| --- | --- | --- |\n"
        + "".join(
            f"| {k} | {best[k]['wall_s_per_gib']:.2f} | {best[k]['cpu_s_per_gib']:.2f} |\n"
            for k in ("plain", "tls")
        )
        + f"\nTLS adds {result['tls_extra_wall_s_per_gib']:.2f} s per GiB "
        f"({result['ratio_tls_to_plain']:.2f}× plain); AES-256-GCM alone, encrypting and "
        f"decrypting one GiB in one thread, takes "
        f"{result['aes_256_gcm_encrypt_decrypt_s_per_gib']:.2f} s."
    )


def sim_engine(result: dict) -> str:
    """``scripts.bench_sim_engine``: the simulation patch against Flower's own wait."""
    best = result["best_seconds_per_round"]
    return (
        f"`python -m scripts.bench_sim_engine` (flwr {result['flwr']}, "
        f"{result['machine']['cores']} cores; `{' '.join(result['overrides'])}`, each figure "
        f"the better of two alternating runs): {best['patched']:.2f} s per round with "
        f"`scripts/sim_engine.py`, {best['flower']:.2f} s with Flower's fixed 0.1 s wait "
        f"({result['ratio_patched_to_flower']:.2f}×); the test AUC is "
        f"{'the same' if result['same_test_auc'] else 'not the same'} in every run."
    )


#: section name -> (the benchmark's JSON under outputs/, its renderer)
SECTIONS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "seed-spread": ("bench_federated/seeds/bench_federated_seeds.json", seed_spread),
    "dp-seed-spread": ("bench_dp_seeds/bench_dp_seeds.json", dp_spread),
    "deployment": ("bench_federated/bench_federated_deploy.json", deployment),
    "inference": ("bench_inference/bench_inference.json", inference),
    "links": ("bench_links/bench_links.json", links),
    "sim-engine": ("bench_sim_engine/bench_sim_engine.json", sim_engine),
    "device": ("bench_device/bench_device.json", device),
}


def render(doc: str, name: str, body: str) -> str:
    """``doc`` with the text between ``name``'s markers replaced by ``body``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(doc):
        raise ValueError(f"{DOC} has no section markers {begin} ... {end}")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--fresh", action="store_true", help="copy each JSON from outputs/ first")
    args = parser.parse_args(argv)
    doc = DOC.read_text()
    for name in args.sections:
        source, renderer = SECTIONS[name]
        stored = STORE / f"{name}.json"
        if args.fresh:
            if not (OUTPUTS / source).is_file():
                print(
                    f"error: {OUTPUTS / source} does not exist: run its benchmark", file=sys.stderr
                )
                return 2
            STORE.mkdir(exist_ok=True)
            shutil.copyfile(OUTPUTS / source, stored)
        doc = render(doc, name, renderer(json.loads(stored.read_text())))
    DOC.write_text(doc)
    print(f"written {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
