"""Encrypted inference benchmark, one run, side by side: ``python -m scripts.bench_inference``.

For the federated default model and ResNet-18, through the real service and client
(separate processes, CrypTen over TCP on 127.0.0.1, TTP dealer): per-image latency at
batch 1 and per-image time at batch 32, encrypted against the same folded model in
plaintext (ratio), CrypTen's bytes per image at the data owner, and the agreement of
encrypted and plaintext predictions (the whole 624-image test split for the default model;
``--agreement-images`` for ResNet-18). A model without ``--checkpoint`` is trained briefly
(``--train-steps`` steps of the centralised loop) so that its weights and BatchNorm
statistics are realistic. Writes ``bench_inference.json`` with the machine's facts.
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
from mpc.inference.fidelity import agreement, plaintext_probabilities, probabilities
from mpc.inference.model import load_served
from server.serve_inference import ServiceProcess
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


def _bench_model(name: str, checkpoint: Path, test_images: np.ndarray, agreement_n: int) -> dict:
    served = load_served(checkpoint)
    images = preprocess_array(test_images, instantiate(served.config["preprocess"]))
    plain_seconds = _plaintext_seconds(served.model, torch.from_numpy(images))
    plain_probs = plaintext_probabilities(served.model, images)
    result: dict = {"checkpoint": str(checkpoint), "model": served.config["model"]["_target_"]}
    with ServiceProcess(checkpoint, ["service.max_images=1000"]) as service:
        with ServiceConnection(service.address) as conn:
            t0 = time.perf_counter()
            one = conn.run(images[:LATENCY_IMAGES], batch=1)
            request_1 = time.perf_counter() - t0
        n = max(agreement_n, 2 * BATCH)
        with ServiceConnection(service.address) as conn:
            t0 = time.perf_counter()
            many = conn.run(images[:n], batch=BATCH)
            request_n = time.perf_counter() - t0
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
    }
    print(f"{name}: {json.dumps({k: result[k] for k in ('encrypted', 'agreement')})}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_inference")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default model's checkpoint")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--agreement-images", type=int, default=64, help="for ResNet-18")
    parser.add_argument("--skip-resnet18", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    test_images, _ = load_npz(resolve_path(None))["test"]
    result: dict = {"machine": machine_facts(), "models": {}}
    default = default_choice("model")
    models = {f"default ({default})": (default, args.checkpoint, len(test_images))}
    if not args.skip_resnet18:
        models["resnet18"] = ("resnet18", None, args.agreement_images)
    for name, (model, checkpoint, agreement_n) in models.items():
        if checkpoint is None:
            GlobalHydra.instance().clear()
            checkpoint = brief_checkpoint(model, args.train_steps, args.out / model)
        result["models"][name] = _bench_model(name, checkpoint, test_images, agreement_n)
    path = args.out / "bench_inference.json"
    write_benchmark(result, path)


if __name__ == "__main__":
    main()
