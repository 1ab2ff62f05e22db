"""Where a run computes: the ``device`` setting of every entry point, resolved and applied.

``device`` is ``auto | cpu | cuda | cuda:N | mps``; ``auto`` takes CUDA when present, then
Apple's MPS, else the CPU. Centralised training, a site's rounds (its node config may set its
own), DP-SGD and the audit all read it, and must treat CUDA alike: the forward pass under
autocast (bf16 where the GPU has it natively, else fp16 with a gradient scaler), the model
in channels-last layout and cuDNN's autotuner. Every helper here is the identity on the
CPU, so a CPU run computes exactly what it computed before the setting existed.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from itertools import chain
from typing import Any

import torch
from torch import nn

from task.runtime.run_options import DeviceError, check_device

__all__ = [
    "DeviceError",
    "autocast",
    "autocast_dtype",
    "configure_backends",
    "grad_scaler",
    "loader_options",
    "model_device",
    "prepare_model",
    "resolve_device",
    "to_device",
]


def resolve_device(spec: str, key: str = "device") -> torch.device:
    """The device ``spec`` names on this machine; :class:`DeviceError` naming ``key`` and
    the value otherwise.

    Why refuse instead of falling back to the CPU: a run asked to use a GPU that silently
    trains on the CPU takes hours longer and its timings mean something else.
    """
    text = check_device(spec, key)
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if text == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{key}={spec!r}: this machine (or this torch build) has no MPS")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{key}={spec!r}: no CUDA GPU is visible to torch here")
        device = torch.device(text)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{key}={spec!r}: this machine has {count} CUDA device(s)")
        return device
    return torch.device(text)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); the CPU if it has neither.

    Why read it from the model: the loops then follow wherever the caller put the model,
    and a test or a tool that builds a CPU model needs no device argument.
    """
    for tensor in chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The 16-bit type CUDA's autocast uses: bf16 where the GPU computes it natively
    (Ampere and later; emulated bf16 is slower than fp32), else fp16. None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(False) else torch.float16


def autocast(
    device: torch.device, *, cpu_bf16: bool = False, enabled: bool = True
) -> AbstractContextManager:
    """The forward pass's precision: CUDA autocast (:func:`autocast_dtype`); on the CPU a
    null context, or bf16 autocast where ``train.precision=bf16`` asks (``cpu_bf16``).

    ``enabled=False`` keeps float32 everywhere: DP-SGD, whose per-example clipping must see
    unscaled float32 gradients for its bound to hold as accounted.
    """
    if not enabled:
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=autocast_dtype(device))
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def grad_scaler(device: torch.device, *, enabled: bool = True) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 autocast on CUDA: fp16's narrow exponent
    range underflows small gradients unless the loss is scaled up first; bf16 and float32
    need none, and a disabled scaler passes ``backward`` and ``step`` straight through."""
    fp16 = enabled and autocast_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda" if fp16 else "cpu", enabled=fp16)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` moved to ``device`` (in place; the same object is returned); on CUDA also
    in channels-last layout, which cuDNN's tensor-core convolutions run fastest.

    Moving keeps the parameter objects, so an optimizer built before still holds them.
    """
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def configure_backends(device: torch.device) -> None:
    """cuDNN's autotuner on CUDA: it times the convolution algorithms for each input shape
    once and keeps the fastest (our shapes are fixed, so the timing pays off).

    Call it after ``monai.utils.set_determinism``, which turns the autotuner off.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; the same tensor if it is already there (no copy)."""
    return tensor.to(device, non_blocking=True)


#: Most loader workers ``auto`` starts for a GPU: enough to copy rows out of the memory-mapped
#: cache and stack them ahead of a GPU step, few enough to leave cores to the training process.
MAX_AUTO_WORKERS = 4


def loader_options(device: torch.device, num_workers: int | str = "auto") -> dict[str, Any]:
    """How a DataLoader feeds ``device``: its worker processes and pinned memory.

    ``num_workers``: a count, or ``auto``: none on the CPU, where workers compete with the
    training's own threads for the same cores and the batches are rows of arrays already in
    memory (or memory-mapped from the site's cache); on CUDA up to
    :data:`MAX_AUTO_WORKERS`, one core kept for the training process. On CUDA batches are
    pinned, so that their copy to the GPU runs asynchronously (``to_device``); workers stay
    alive between epochs, so an epoch does not start by forking them again.
    """
    if num_workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        num_workers = min(MAX_AUTO_WORKERS, cores - 1) if device.type == "cuda" else 0
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r} must be 'auto' or a count >= 0")
    return {
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": num_workers > 0,
    }
