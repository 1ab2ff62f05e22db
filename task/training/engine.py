"""Training and evaluation loops. No Flower here: federated clients call the same loops."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


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
) -> dict[str, float]:
    """One pass (or ``max_steps`` batches) of training.

    Returns the mean loss, the *number of examples* trained on (FedAvg weights by
    examples, never by batches) and the number of optimizer steps. ``proximal_mu`` > 0
    adds FedProx's proximal term
    ``mu/2 * ||w - w_global||^2`` against ``global_params``. ``on_step`` runs after every
    optimizer step (for example to update an exponential moving average of the weights).
    ``channels_last`` trains image batches in the channels-last memory layout, which
    oneDNN's CPU convolutions run faster; the model is returned to the default layout
    afterwards, so what is saved or sent is unchanged in form. ``bf16`` runs the forward
    pass under CPU autocast to bfloat16 (weights, optimizer and loss stay float32).
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=layout)
    model.train()
    total_loss, n_examples, steps = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for step, (images, labels) in enumerate(bar, start=1):
        images = torch.as_tensor(images, dtype=torch.float32)
        if images.ndim == 4:
            images = images.contiguous(memory_format=layout)
        labels = torch.as_tensor(labels, dtype=torch.long)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        loss = loss_fn(logits.float(), labels)
        if proximal_mu > 0.0 and global_params is not None:
            prox = sum(
                (p - g).pow(2).sum() for p, g in zip(model.parameters(), global_params, strict=True)
            )
            loss = loss + 0.5 * proximal_mu * prox
        loss.backward()
        optimizer.step()
        steps += 1
        if on_step is not None:
            on_step()
        total_loss += float(loss.detach()) * len(labels)
        n_examples += len(labels)
        bar.set_postfix(loss=f"{total_loss / n_examples:.4f}")
        if max_steps is not None and step >= max_steps:
            break
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return {"loss": total_loss / max(n_examples, 1), "num_examples": n_examples, "steps": steps}


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``(N, C)`` and true labels ``(N,)`` over a loader."""
    model.eval()
    probs, labels = [], []
    for images, y in loader:
        logits = model(torch.as_tensor(images, dtype=torch.float32))
        probs.append(torch.softmax(logits.float(), dim=1).numpy())
        labels.append(np.asarray(y).reshape(-1))
    if not probs:
        raise ValueError("cannot evaluate on an empty split")
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


def mean_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy of already computed probabilities (no second forward pass)."""
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(p).mean())
