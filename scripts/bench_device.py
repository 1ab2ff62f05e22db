"""Training and diagnosis speed on this machine's device: ``python -m scripts.bench_device``.

For each model (ResNet-18 and DenseNet-121 by default) at ``--resolution`` px, 1 channel,
2 classes:

(a) centralised training: images/s through the project's training path against a plain
    PyTorch loop in the same process (same network and weights, batch, optimiser and
    precision; no framework), and their ratio (target >= 0.9);
(b) federated rounds of 3 simulated sites with secure aggregation against the same sites'
    local training as plain loops (target >= 0.8 per round);

(c) the site cache's effect (:mod:`scripts.bench_device_cache`): with the first model, the
    first epoch from DICOM files at clinical size (decoding and preprocessing them, writing
    the cache) against later epochs and the next process's cache hit;

and (d) encrypted diagnosis with the default model at batch 1 and 32, both computing
parties on the device, and on the CPU in the same run where the device is a GPU.

The data is PneumoniaMNIST's 28 px images upsampled to the resolution by the project's
preprocessing: a throughput workload only, since the quality of a model at 224 px cannot be
judged from 28 px sources. Warm-up steps are excluded from every figure. Writes
``bench_device.json`` with the machine's and the device's facts. docs/gpu.md says how to
run it on a GPU machine (``scripts/gpu_bench.sh``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra.core.global_hydra import GlobalHydra

from scripts.bench_device_cache import site_cache
from scripts.bench_device_encrypted import encrypted
from scripts.bench_device_federated import federated
from scripts.bench_device_loops import IMAGENET_STEM, Workload, centralised
from task.constants import REPO_ROOT
from task.evaluation.report import write_benchmark
from task.runtime.device import DeviceError, configure_backends, resolve_device
from task.runtime.machine import machine_facts

MODELS = ("resnet18", "densenet121")

DATA_NOTE = (
    "PneumoniaMNIST (28 px) upsampled to {r} px by bilinear resize: a throughput workload; "
    "the quality of a model at {r} px cannot be judged from 28 px sources"
)


class DeviceUnavailableError(RuntimeError):
    """``--device`` names a device this machine does not have."""


def _device(spec: str) -> torch.device:
    """``--device`` resolved as every entry point resolves ``device``, backends set for it."""
    try:
        device = resolve_device(spec, key="--device")
    except DeviceError as err:
        raise DeviceUnavailableError(str(err)) from err
    configure_backends(device)
    return device


def device_facts(device: torch.device) -> dict:
    """What the figures ran on: the GPU's name and memory, CUDA and cuDNN, or the CPU."""
    facts: dict = {"device": str(device), "cuda_build": torch.version.cuda}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
        }
    return facts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per figure")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument(
        "--resnet18-stem",
        choices=("imagenet", "config"),
        default="imagenet",
        help="ResNet-18's stem: ImageNet's (7x7 stride 2, max-pool) or the config's own",
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=2, help="federated rounds (first: cold)")
    parser.add_argument("--skip-federated", action="store_true")
    parser.add_argument("--skip-cache", action="store_true")
    parser.add_argument("--cache-images", type=int, default=64, help="DICOM files of (c)")
    parser.add_argument("--cache-source-px", type=int, default=2048, help="their side in px")
    parser.add_argument("--cache-epochs", type=int, default=3)
    parser.add_argument("--skip-encrypted", action="store_true")
    parser.add_argument("--encrypted-train-steps", type=int, default=20)
    parser.add_argument("--encrypted-latency-images", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_device")
    return parser


def _model(args: argparse.Namespace, work: Workload) -> dict:
    """(a) and, unless skipped, (b) for one model."""
    t0 = time.perf_counter()
    GlobalHydra.instance().clear()
    result = {"centralised": centralised(work)}
    if not args.skip_federated:
        plain = result["centralised"]["plain_images_per_s"]
        result["federated"] = federated(work, args.out, args.rounds, plain)
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def _summary(result: dict) -> dict:
    """The figures a reader looks for first."""
    out = {"device": result["device"]["device"]}
    for name, m in result["models"].items():
        c = m["centralised"]
        row = {k: c[k] for k in ("project_images_per_s", "plain_images_per_s", "ratio")}
        if "federated" in m:
            f = m["federated"]
            row["federated_ratio"] = {
                k: f[k]["ratio_to_plain"] for k in ("first_round", "last_round")
            }
        out[name] = row
    if "site_cache" in result:
        c = result["site_cache"]
        out["site_cache_later_over_first"] = c["later_over_first"]
    if "encrypted" in result:
        e = result["encrypted"]
        out["encrypted"] = {k: e[k] for k in e if k.endswith("seconds_per_image")}
        out["encrypted"]["by_device"] = e.get("by_device", {})
    return out


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    try:
        device = _device(args.device)
    except DeviceUnavailableError as err:
        raise SystemExit(str(err)) from err
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_facts(), "device": device_facts(device)}
    result["workload"] = {
        "data": DATA_NOTE.format(r=args.resolution),
        "resolution": args.resolution,
        "batch": args.batch,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup,
        "precision": args.precision,
        "federated_rounds": None if args.skip_federated else args.rounds,
        "resnet18_stem": args.resnet18_stem,
    }
    result["models"] = {}
    for name in args.models:
        stem = IMAGENET_STEM.get(name, []) if args.resnet18_stem == "imagenet" else []
        work = Workload(
            name,
            args.resolution,
            args.batch,
            args.steps,
            args.warmup,
            args.precision,
            device,
            tuple(stem),
        )
        result["models"][name] = _model(args, work)
        if not args.skip_cache and "site_cache" not in result:
            args_c = (args.cache_images, args.cache_source_px, args.cache_epochs)
            result["site_cache"] = {"model": name, **site_cache(work, args.out, *args_c)}
    if not args.skip_encrypted:
        result["encrypted"] = encrypted(
            args.out, args.encrypted_train_steps, args.encrypted_latency_images, device
        )
    write_benchmark(result, args.out / "bench_device.json", _summary(result))
    return result


if __name__ == "__main__":
    main()
