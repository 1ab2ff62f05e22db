"""Encrypted diagnosis for :mod:`scripts.bench_device`: seconds per image at batch 1 and 32.

The three parties (model owner, dealer, data owner) run the production party functions in
processes of their own on 127.0.0.1 over the plain links (:func:`scripts.bench_channels.
run_session`): the production communicator without TLS, the only transport that carries a
party on CUDA (CrypTen's gloo sends CPU tensors only); ``scripts.bench_inference`` compares
the transports. Both computing parties compute on the bench's ``--device``, and on a CUDA
device the same sessions also run with both on the CPU, so one run compares the two; the
dealer computes on the CPU in both. The model is the federation's default network, briefly
trained at its own resolution, so that its BatchNorm statistics are real.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from mpc.inference.device import CPU
from mpc.inference.model import load_served
from scripts.bench_channels import run_session
from task.config import default_choice
from task.data.pneumoniamnist import load_npz, resolve_path
from task.data.preprocess import preprocess_array
from task.training.brief import brief_checkpoint

BATCH = 32
TRANSPORT = "plain"


def devices_to_time(device: torch.device) -> list[torch.device]:
    """The bench's device, and the CPU too where that is a GPU (CrypTen has no MPS path:
    its parties compute on the CPU there)."""
    return [device, CPU] if device.type == "cuda" else [CPU]


def timed(checkpoint: Path, images: np.ndarray, latency_images: int, device: torch.device):
    """Median seconds per image at batch 1 over ``latency_images`` images, and the mean at
    batch 32 over one full batch, both parties on ``device``."""
    pair = (device, device)
    one = run_session(checkpoint, images[:latency_images], 1, TRANSPORT, {}, pair)
    many = run_session(checkpoint, images[:BATCH], BATCH, TRANSPORT, {}, pair)
    return {
        "batch1_seconds_per_image": statistics.median(one["batch_seconds"]),
        "batch32_seconds_per_image": sum(many["batch_seconds"]) / BATCH,
    }


def encrypted(out: Path, train_steps: int, latency_images: int, device: torch.device = CPU) -> dict:
    """The figures on :func:`devices_to_time`; those of the first also at the top level."""
    model = default_choice("model")
    GlobalHydra.instance().clear()
    checkpoint = brief_checkpoint(model, train_steps, out / "encrypted" / model)
    config = load_served(checkpoint).config
    test_images, _ = load_npz(resolve_path(None))["test"]
    images = preprocess_array(test_images[:BATCH], instantiate(config["preprocess"]))
    timings = {
        str(d): timed(checkpoint, images, latency_images, d) for d in devices_to_time(device)
    }
    first = next(iter(timings))
    return {
        "model": model,
        "input_shape": list(images.shape[1:]),
        "transport": TRANSPORT,
        "parties_device": first,
        "batch1_images": latency_images,
        **timings[first],
        "by_device": timings,
    }
