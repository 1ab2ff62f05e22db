"""Where a computing party of encrypted diagnosis computes: its ``device`` setting.

Each computing party (the model owner's ``service.device``, the data owner's
``client.device`` in ``conf/inference.yaml``) chooses its own device: shares cross the wire
as CPU tensors (:mod:`mpc.channel.communicator`) and all randomness the parties share is
drawn on the CPU (:mod:`mpc.crypten_device`), so a party on a GPU works with one on the
CPU. The dealer has no setting: it only draws random numbers and computes the triples'
products from them, on the CPU, which must give the numbers the parties draw.
"""

from __future__ import annotations

from typing import Any

import torch

from task.runtime.device import DeviceError, resolve_device

CPU = torch.device("cpu")


def party_device(spec: Any, key: str) -> torch.device:
    """The device ``spec`` names for CrypTen on this machine: ``auto`` is CUDA where torch
    sees a GPU, else the CPU; :class:`DeviceError` naming ``key`` for a value that is
    malformed, absent, names missing hardware, or names Apple's MPS (CrypTen 0.4.1 computes
    on integers through CUDA-only code: it has no MPS path)."""
    if spec is None:
        raise DeviceError(f"{key} is not set: one of auto, cpu, cuda, cuda:N")
    if str(spec).strip() == "mps":
        raise DeviceError(f"{key}={spec!r}: CrypTen computes on the CPU or CUDA only, not MPS")
    device = resolve_device(str(spec), key)
    return CPU if device.type == "mps" else device  # auto on an Apple machine


def check_transport(transport: str, device: torch.device) -> None:
    """Refuse CrypTen's own gloo transport for a party off the CPU: gloo's point-to-point
    send and receive, which CrypTen uses, take CPU tensors only."""
    if transport == "gloo" and device.type != "cpu":
        raise ValueError(
            f"transport 'gloo' carries CPU tensors only; a party on {device} needs the "
            "'tls' or 'plain' links"
        )


def to_party_device(graph, device: torch.device):
    """The encrypted ``graph`` with its shares moved to ``device`` (unchanged on the CPU).

    Why after encryption: the weights are shared on the CPU, as between two CPU parties,
    and each party then moves its own shares; CrypTen's ``to`` wraps CUDA shares in the
    ``CUDALongTensor`` its CUDA arithmetic needs."""
    if device.type != "cpu":
        graph.to(device)
    return graph
