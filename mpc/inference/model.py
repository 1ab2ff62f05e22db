"""The model both parties evaluate: rebuilt from a checkpoint's config, made MPC-friendly.

The architecture is public to both parties (each builds the same CrypTen graph); only the
model owner holds the weights. Before conversion every BatchNorm is folded into the
convolution before it (``torch.fx``'s conv-BN fusion): CrypTen's encrypted BatchNorm needs
an inverse square root that is inaccurate outside variance 0.1-100, and a folded network
has one fewer encrypted operation per layer. The ONNX export keeps the batch dimension
symbolic (see :mod:`mpc.crypten_compat`), so one converted graph serves any batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch.fx.experimental.optimization import fuse

from task.config import config_targets
from task.runtime import checkpoint

#: Keys a checkpoint's ``config`` must hold to serve encrypted diagnosis.
CONFIG_KEYS = checkpoint.INFERENCE_KEYS


#: Where a config received from the other party may point ``_target_``: MONAI transforms
#: and networks only. A config is code (Hydra instantiates whatever ``_target_`` names), so
#: the data owner must never instantiate an arbitrary one sent by the service.
ALLOWED_TARGETS = {
    "model": ("monai.networks.nets.",),
    "preprocess": ("monai.transforms.",),
}


class UntrustedConfig(ValueError):
    """A received config names a ``_target_`` outside :data:`ALLOWED_TARGETS`."""


def check_targets(config: dict[str, Any]) -> None:
    """Refuse a received inference config whose ``model`` or ``preprocess`` would make
    Hydra call anything but MONAI networks and transforms."""

    for key, prefixes in ALLOWED_TARGETS.items():
        if key not in config:
            raise UntrustedConfig(f"inference config has no '{key}'")
        for target in config_targets(config[key]):
            if not target.startswith(prefixes) or target.count(".") != prefixes[0].count("."):
                raise UntrustedConfig(
                    f"inference config '{key}' names _target_ {target!r}; only "
                    f"{', '.join(p + '*' for p in prefixes)} is allowed"
                )


class ModelNotServable(ValueError):
    """A checkpoint that cannot be turned into an encrypted model, with the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


@dataclass(frozen=True)
class Served:
    """What the model owner serves: the folded plaintext model and its public config."""

    model: torch.nn.Module
    config: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return input_shape(self.config)


def input_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """``(C, H, W)`` of one preprocessed image under ``config``."""
    return (int(config["channels"]), int(config["resolution"]), int(config["resolution"]))


def build_architecture(config: dict[str, Any], path: str | Path = "<config>") -> torch.nn.Module:
    """The network of ``config["model"]`` in eval mode, BatchNorm folded, with placeholder
    weights (the data owner's copy never holds the real ones).

    The placeholders are random, not the constructor's: a fresh network has many equal
    tensors (zero biases, unit BatchNorm scales), and the ONNX exporter merges equal
    initializers, which would give the data owner a graph with fewer parameters than the
    model owner's. :func:`graph_signature` checks that both graphs agree.
    """
    try:
        model = instantiate(config["model"])
    except Exception as err:  # Hydra wraps any constructor failure; report it by file
        raise ModelNotServable(path, f"cannot build model {config['model']}: {err}") from err
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5, generator=generator)
    return fold_batchnorm(model, path)


def fold_batchnorm(model: torch.nn.Module, path: str | Path = "<model>") -> torch.nn.Module:
    """A copy of ``model`` (eval mode) with each BatchNorm folded into its convolution.

    Raises :class:`ModelNotServable` when the network cannot be traced or keeps a
    BatchNorm that follows no convolution (it would be evaluated encrypted, inaccurately).
    """
    model = model.eval()
    try:
        folded = fuse(model, inplace=False)
    except Exception as err:  # torch.fx raises many types for untraceable code
        raise ModelNotServable(
            path, f"cannot trace {type(model).__name__} to fold BatchNorm: {err}"
        ) from err
    left = [
        name
        for name, m in folded.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    if left:
        raise ModelNotServable(
            path, f"BatchNorm layers {left} follow no convolution and cannot be folded"
        )
    return folded.eval()


def load_served(path: str | Path) -> Served:
    """Read a ``best.pt`` / ``final.pt`` written by training and prepare it for serving."""
    path = Path(path)
    try:
        config, weights = checkpoint.read_inference_checkpoint(path)
    except checkpoint.NotAnInferenceCheckpoint as err:
        advice = " (written by training)" if err.problem == "no-config" else ""
        raise ModelNotServable(path, err.reason + advice) from err
    if config.get("dp_compatible"):
        raise ModelNotServable(
            path,
            "was trained with differential privacy (BatchNorm replaced by GroupNorm), and "
            "encrypted serving folds BatchNorm only; GroupNorm is not served",
        )
    model = instantiate(config["model"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ModelNotServable(path, f"weights do not fit the configured model: {err}") from err
    return Served(fold_batchnorm(model, path), config)
