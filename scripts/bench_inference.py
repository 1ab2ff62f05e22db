"""Encrypted inference benchmark, one run, side by side: ``python -m scripts.bench_inference``.

For the federated default model and ``small_cnn``:

* **transports** (:mod:`scripts.bench_channels`): the three parties in processes of their
  own on 127.0.0.1, the same images over the TLS links and over CrypTen's plaintext gloo,
  one after the other: seconds per image at batch 1 and 32, bytes per image (CrypTen's
  count, and the TLS links' bytes on the wire), and TLS over gloo as a ratio;
* **the service path**: through the real dealer, service and client (TLS, certificates of
  a test consortium): per-image latency at batch 1 and per-image time at batch 32,
  encrypted against the same folded model in plaintext (ratio), and the agreement of
  encrypted and plaintext predictions (the whole 624-image test split for the default
  model; ``--agreement-images`` for the other).

A model without ``--checkpoint`` is trained briefly (``--train-steps`` steps of the
centralised loop) so that its weights and BatchNorm statistics are realistic. Writes
``bench_inference.json`` with the machine's facts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from client.diagnose import ServiceConnection
from mpc.channel.certs import DATA_OWNER, DEALER, MODEL_OWNER, PartyCredentials
from mpc.inference.fidelity import agreement, plaintext_probabilities, probabilities
from mpc.inference.model import load_served
from scripts.bench_channels import compare_transports
from scripts.inference_processes import DealerProcess, ServiceProcess, consortium
from task.config import default_choice
from task.constants import REPO_ROOT
from task.data.pneumoniamnist import load_npz, resolve_path
from task.data.preprocess import preprocess_array
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts
from task.training.brief import brief_checkpoint

LATENCY_IMAGES = 8
BATCH = 32


def _plaintext_seconds(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        model(images[:BATCH])  # warm-up
        single = []
        for i in range(LATENCY_IMAGES * 4):
            t0 = time.perf_counter()
            model(images[i : i + 1])
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(0, 2 * BATCH, BATCH):
            model(images[start : start + BATCH])
        batched = (time.perf_counter() - t0) / (2 * BATCH)
    return {
        "batch1_seconds_per_image": statistics.median(single),
        "batch32_seconds_per_image": batched,
    }


def _service_runs(checkpoint: Path, images: np.ndarray, n: int, folders: dict[str, Path]):
    """The batch-1 and batch-32 requests through the real dealer, service and client."""
    me = PartyCredentials.from_folder(folders[DATA_OWNER], DATA_OWNER)
    with (
        DealerProcess(folders[DEALER]) as dealer,
        ServiceProcess(
            checkpoint, dealer.address, folders[MODEL_OWNER], ["service.max_images=1000"]
        ) as service,
    ):
        with ServiceConnection(service.address, me) as conn:
            t0 = time.perf_counter()
            one = conn.run(images[:LATENCY_IMAGES], batch=1)
            request_1 = time.perf_counter() - t0
        with ServiceConnection(service.address, me) as conn:
            t0 = time.perf_counter()
            many = conn.run(images[:n], batch=BATCH)
            request_n = time.perf_counter() - t0
    return one, many, request_1, request_n


def _bench_model(
    name: str, checkpoint: Path, test_images: np.ndarray, agreement_n: int, folders
) -> dict:
    served = load_served(checkpoint)
    images = preprocess_array(test_images, instantiate(served.config["preprocess"]))
    plain_seconds = _plaintext_seconds(served.model, torch.from_numpy(images))
    plain_probs = plaintext_probabilities(served.model, images)
    result: dict = {"checkpoint": str(checkpoint), "model": served.config["model"]["_target_"]}
    result["transports"] = compare_transports(checkpoint, images, folders, LATENCY_IMAGES, BATCH)
    n = max(agreement_n, 2 * BATCH)
    one, many, request_1, request_n = _service_runs(checkpoint, images, n, folders)
    full = many["batch_seconds"][: n // BATCH]  # full batches only
    encrypted = {
        "batch1_seconds_per_image": statistics.median(one["batch_seconds"]),
        "batch32_seconds_per_image": sum(full) / (len(full) * BATCH),
    }
    result.update(
        plaintext=plain_seconds,
        encrypted=encrypted,
        ratio_encrypted_to_plaintext={
            k: encrypted[k] / plain_seconds[k]
            for k in ("batch1_seconds_per_image", "batch32_seconds_per_image")
        },
        bytes_per_image_at_data_owner={
            "batch1": one["inference"]["bytes"] / LATENCY_IMAGES,
            "batch32": many["inference"]["bytes"] / n,
        },
        request_wall_seconds={
            f"{LATENCY_IMAGES}_images_batch1": request_1,
            f"{n}_images_batch32": request_n,
        },
        agreement=agreement(probabilities(many["logits"]), plain_probs[:n]),
    )
    result["targets_met"] = {
        "batch1_le_1s": encrypted["batch1_seconds_per_image"] <= 1.0,
        "batch32_le_0.25s": encrypted["batch32_seconds_per_image"] <= 0.25,
        "agreement_ge_99.5pct": result["agreement"]["agreement"] >= 0.995,
        **result["transports"]["targets_met"],
    }
    shown = ("encrypted", "agreement")
    print(f"{name}: {json.dumps({k: result[k] for k in shown})}", flush=True)
    print(f"{name} transports: {json.dumps(result['transports']['ratio_tls_to_gloo'])}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_inference")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default model's checkpoint")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--agreement-images", type=int, default=64, help="for small_cnn")
    parser.add_argument("--skip-small-cnn", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    test_images, _ = load_npz(resolve_path(None))["test"]
    result: dict = {"machine": machine_facts(), "models": {}}
    folders = consortium(args.out / "certificates")
    default = default_choice("model")
    models = {f"default ({default})": (default, args.checkpoint, len(test_images))}
    if not args.skip_small_cnn:
        models["small_cnn"] = ("small_cnn", None, args.agreement_images)
    for name, (model, checkpoint, agreement_n) in models.items():
        if checkpoint is None:
            GlobalHydra.instance().clear()
            checkpoint = brief_checkpoint(model, args.train_steps, args.out / model)
        result["models"][name] = _bench_model(name, checkpoint, test_images, agreement_n, folders)
    path = args.out / "bench_inference.json"
    write_benchmark(result, path)


if __name__ == "__main__":
    main()
