"""How far encrypted outputs are from plaintext: probabilities and their agreement."""

from __future__ import annotations

import numpy as np
import torch


def probabilities(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Softmax of ``(N, K)`` logits, in float64."""
    return torch.softmax(torch.as_tensor(logits).double(), dim=1).numpy()


def plaintext_probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The plaintext model's probabilities for preprocessed ``(N, C, H, W)`` images."""
    with torch.no_grad():
        return probabilities(model(torch.from_numpy(images)))


def agreement(encrypted: np.ndarray, plain: np.ndarray) -> dict[str, float]:
    """Share of images with the same predicted class, and the largest probability error."""
    return {
        "images": len(plain),
        "agreement": float((encrypted.argmax(1) == plain.argmax(1)).mean()),
        "max_abs_probability_error": float(np.abs(encrypted - plain).max()),
    }
