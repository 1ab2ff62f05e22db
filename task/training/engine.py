"""Training and evaluation loops. No Flower here: federated clients call the same loops."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from task.runtime.device import autocast, grad_scaler, model_device, to_device


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1) for a class-balanced cross-entropy."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def train_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    max_steps: int | None = None,
    proximal_mu: float = 0.0,
    global_params: list[torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "train",
    on_step: Callable[[], None] | None = None,
    channels_last: bool = False,
    bf16: bool = False,
    mixed_precision: bool = True,
) -> dict[str, float]:
    """One pass (or ``max_steps`` batches) of training.

    Returns the mean loss, the *number of examples* trained on (FedAvg weights by
    examples, never by batches) and the number of optimizer steps. ``proximal_mu`` > 0
    adds FedProx's proximal term ``mu/2 * ||w - w_global||^2`` against ``global_params``.
    ``on_step`` runs after every optimizer step (for example to update an exponential
    moving average of the weights). ``channels_last`` trains image batches in the
    channels-last memory layout, which oneDNN's CPU convolutions run faster; on the CPU the
    model is returned to the default layout afterwards, so what is saved or sent is
    unchanged in form. ``bf16`` runs the forward pass under CPU autocast to bfloat16
    (weights, optimizer and loss stay float32).

    Batches go to the model's device (:mod:`task.runtime.device`). On CUDA the model stays
    channels-last and, with ``mixed_precision``, the forward pass runs under CUDA autocast
    (fp16 with a gradient scaler); ``False`` keeps float32, as DP-SGD's clipping needs.
    """
    device = model_device(model)
    layout = _training_layout(model, device, channels_last)
    loss_fn.to(device)  # a class-weighted loss holds its weights as a buffer
    scaler = grad_scaler(device, enabled=mixed_precision)
    model.train()
    total_loss, n_examples, steps = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for step, (images, labels) in enumerate(bar, start=1):
        images, labels = _batch(images, labels, layout, device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cpu_bf16=bf16, enabled=mixed_precision):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        if proximal_mu > 0.0 and global_params is not None:
            loss = loss + 0.5 * proximal_mu * _proximal_term(model, global_params)
        _step(loss, optimizer, scaler)
        steps += 1
        if on_step is not None:
            on_step()
        total_loss += float(loss.detach()) * len(labels)
        n_examples += len(labels)
        bar.set_postfix(loss=f"{total_loss / n_examples:.4f}")
        if max_steps is not None and step >= max_steps:
            break
    if channels_last and device.type != "cuda":  # CUDA keeps the layout it trains fastest in
        model.to(memory_format=torch.contiguous_format)
    return {"loss": total_loss / max(n_examples, 1), "num_examples": n_examples, "steps": steps}


def _training_layout(
    model: nn.Module, device: torch.device, channels_last: bool
) -> torch.memory_format:
    """The image batches' layout: channels-last if asked or on CUDA (where
    :func:`~task.runtime.device.prepare_model` made the model channels-last); the model is
    put in it if asked."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if channels_last or device.type == "cuda":
        return torch.channels_last
    return torch.contiguous_format


def _batch(images, labels, layout: torch.memory_format, device: torch.device):
    """A batch as float32 images (in ``layout``) and long labels, on ``device``."""
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim == 4:
        images = images.contiguous(memory_format=layout)
    labels = torch.as_tensor(labels, dtype=torch.long)
    return to_device(images, device), to_device(labels, device)


def _proximal_term(model: nn.Module, global_params: list[torch.Tensor]) -> torch.Tensor:
    """FedProx's ``||w - w_global||^2``."""
    return sum((p - g).pow(2).sum() for p, g in zip(model.parameters(), global_params, strict=True))


def _step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Backward and optimizer step; through the fp16 gradient scaler where it is enabled
    (a disabled scaler would pass them through too: spelt out so the CPU path is plain)."""
    if scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, C)`` and true labels ``(N,)`` over a loader, as numpy
    arrays on the CPU wherever the model is. In float32 on every device: evaluation is a
    small part of a run, and the reported metrics should not carry 16-bit rounding."""
    model.eval()
    device = model_device(model)
    probs, labels = [], []
    for images, y in loader:
        logits = model(to_device(torch.as_tensor(images, dtype=torch.float32), device))
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(np.asarray(y).reshape(-1))
    if not probs:
        raise ValueError("cannot evaluate on an empty split")
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def mean_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy of already computed probabilities (no second forward pass)."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(p).mean())
