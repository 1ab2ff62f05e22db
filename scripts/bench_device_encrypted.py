"""Encrypted diagnosis for :mod:`scripts.bench_device`: seconds per image at batch 1 and 32.

The three parties (model owner, dealer, data owner) run the production party functions in
processes of their own on 127.0.0.1 over CrypTen's gloo transport
(:func:`scripts.bench_channels.run_session`); ``scripts.bench_inference`` compares that
transport with the TLS links and the service path. The model is the federation's default
network, briefly trained at its own resolution, so that its BatchNorm statistics are real.
CrypTen's parties compute on the CPU whatever ``--device`` is.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from mpc.inference.model import load_served
from scripts.bench_channels import run_session
from task.config import default_choice
from task.data.pneumoniamnist import load_npz, resolve_path
from task.data.preprocess import preprocess_array
from task.training.brief import brief_checkpoint

BATCH = 32


def encrypted(out: Path, train_steps: int, latency_images: int) -> dict:
    """Median seconds per image at batch 1 over ``latency_images`` images, and the mean at
    batch 32 over one full batch."""
    model = default_choice("model")
    GlobalHydra.instance().clear()
    checkpoint = brief_checkpoint(model, train_steps, out / "encrypted" / model)
    config = load_served(checkpoint).config
    test_images, _ = load_npz(resolve_path(None))["test"]
    images = preprocess_array(test_images[:BATCH], instantiate(config["preprocess"]))
    one = run_session(checkpoint, images[:latency_images], 1, "gloo", {})
    many = run_session(checkpoint, images[:BATCH], BATCH, "gloo", {})
    return {
        "model": model,
        "input_shape": list(images.shape[1:]),
        "transport": "gloo",
        "parties_device": "cpu",
        "batch1_images": latency_images,
        "batch1_seconds_per_image": statistics.median(one["batch_seconds"]),
        "batch32_seconds_per_image": sum(many["batch_seconds"]) / BATCH,
    }
