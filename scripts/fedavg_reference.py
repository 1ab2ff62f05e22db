"""The federation without Flower, in a fresh process: ``python -m scripts.fedavg_reference``.

``scripts.bench_federated`` (b) sets this against the simulation's rounds. Flower runs the
sites in fresh worker processes that import the training loops (torch, MONAI) when their
first message arrives, inside the timed rounds; so this process is timed the same way, from
before it imports the loops to the end of the last round. Writes ``--out`` (JSON).
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before the loops' imports, as in a Flower site worker

import argparse  # noqa: E402  (stdlib, after the clock on purpose)
from pathlib import Path  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="sites at a time (default: as the simulation; 1: one process, all threads)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml")
    args = parser.parse_args(argv)

    from task.config import compose_config
    from task.evaluation.report import write_json
    from task.federation.reference import fedavg_reference

    import_seconds = time.perf_counter() - T_START
    result = fedavg_reference(compose_config(args.overrides), workers=args.workers)
    summary = {
        "overrides": args.overrides,
        # From before the imports: the figure set against Flower's rounds_seconds.
        "seconds": time.perf_counter() - T_START,
        "import_seconds": import_seconds,
        # Loading, then the rounds (each worker loads its sites on first use, as Flower's).
        "run_seconds": result["seconds"],
        "workers": result["workers"],
        "threads": result["threads"],
        "last_round": result["history"][-1],
    }
    write_json(summary, args.out)
    return summary


if __name__ == "__main__":
    main()
