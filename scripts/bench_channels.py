"""The same encrypted inference over the TLS links and over CrypTen's plaintext gloo.

Used by :mod:`scripts.bench_inference`. The three parties run the production party
functions, each in a process of its own on 127.0.0.1, with the same images; transports
alternate (gloo, TLS, gloo, TLS) so that a drift of the machine's speed falls on both,
and each figure is the better of its two runs.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import torch

from mpc.channel.certs import DATA_OWNER, DEALER, MODEL_OWNER, PartyCredentials
from mpc.channel.session import Endpoints
from mpc.inference.device import CPU
from mpc.inference.model import load_served
from mpc.inference.party import (
    Channel,
    Session,
    prepare_data_owner,
    prepare_dealer,
    prepare_model_owner,
    run_data_owner,
    run_dealer,
    run_model_owner,
)
from mpc.inference.process import PreparedParty, run_parties
from mpc.parties import free_port

#: Targets of the encrypted-channels issue: TLS over gloo, per image.
MAX_OVERHEAD = {1: 1.25, 32: 1.15}


def _session(transport: str, n: int, batch: int) -> Session:
    if transport == "gloo":
        return Session(n, batch, "gloo", rendezvous=f"tcp://127.0.0.1:{free_port()}")
    ends = Endpoints(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    return Session(n, batch, transport, secrets.token_hex(16), ends)


def _channel(transport: str, folders: dict[str, Path], role: str) -> Channel:
    if transport != "tls":
        return Channel()
    return Channel(PartyCredentials.from_folder(folders[role], role), "127.0.0.1")


def run_session(
    checkpoint: Path,
    images: np.ndarray,
    batch: int,
    transport: str,
    folders: dict[str, Path],
    devices: tuple[torch.device, torch.device] = (CPU, CPU),
) -> dict:
    """One session of the three parties, the model owner and the data owner computing on
    ``devices``; the data owner's result."""
    config = load_served(checkpoint).config
    session = _session(transport, len(images), batch)
    owner_device, data_device = devices
    parties = [
        PreparedParty(
            "model-owner",
            prepare_model_owner,
            run_model_owner,
            (str(checkpoint), _channel(transport, folders, MODEL_OWNER), owner_device),
        ),
        PreparedParty(
            "dealer", prepare_dealer, run_dealer, (_channel(transport, folders, DEALER),)
        ),
        PreparedParty(
            "data-owner",
            prepare_data_owner,
            run_data_owner,
            (
                config,
                np.ascontiguousarray(images),
                None,
                _channel(transport, folders, DATA_OWNER),
                data_device,
            ),
        ),
    ]
    return run_parties(parties, session, start_timeout=300, result_timeout=900)[2]


def _figures(result: dict, n: int, batch: int) -> dict:
    full = result["batch_seconds"][: n // batch] if batch > 1 else result["batch_seconds"]
    seconds = sorted(full)[len(full) // 2] if batch == 1 else sum(full) / (len(full) * batch)
    out = {
        "seconds_per_image": seconds,
        "crypten_bytes_per_image": result["inference"]["bytes"] / n,
    }
    if "wire_bytes" in result["inference"]:
        wire = result["inference"]["wire_bytes"] - result["model_sharing"]["wire_bytes"]
        out["wire_bytes_per_image"] = wire / n
    return out


def compare_transports(
    checkpoint: Path, images: np.ndarray, folders: dict[str, Path], latency_n: int, batch: int
) -> dict:
    """Seconds and bytes per image at batch 1 and ``batch``, TLS against gloo."""
    runs = {1: images[:latency_n], batch: images[: 2 * batch]}
    best: dict[str, dict[int, dict]] = {"gloo": {}, "tls": {}}
    for _ in range(2):
        for transport in ("gloo", "tls"):
            for size, chunk in runs.items():
                figures = _figures(
                    run_session(checkpoint, chunk, size, transport, folders), len(chunk), size
                )
                kept = best[transport].get(size)
                if kept is None or figures["seconds_per_image"] < kept["seconds_per_image"]:
                    best[transport][size] = figures
    ratio = {
        f"batch{size}": best["tls"][size]["seconds_per_image"]
        / best["gloo"][size]["seconds_per_image"]
        for size in runs
    }
    return {
        "gloo": {f"batch{s}": f for s, f in best["gloo"].items()},
        "tls": {f"batch{s}": f for s, f in best["tls"].items()},
        "ratio_tls_to_gloo": ratio,
        "targets_met": {
            f"tls_overhead_batch{size}_le_{round((limit - 1) * 100)}pct": ratio[f"batch{size}"]
            <= limit
            for size, limit in MAX_OVERHEAD.items()
            if f"batch{size}" in ratio
        }
        | {"tls_batch1_le_1s": best["tls"][1]["seconds_per_image"] <= 1.0},
    }
