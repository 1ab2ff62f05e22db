"""Build the configured MONAI network and check it can process the data's image shape.

The network class comes from the Hydra ``model`` group by ``_target_`` (one factory:
Hydra's ``instantiate``; no if/elif chain). Networks are chosen so that CrypTen can encrypt
them (Conv, BatchNorm, ReLU, pooling, Flatten, Linear; no PReLU or InstanceNorm) and Opacus
can train them after ``ModuleValidator.fix`` swaps BatchNorm for GroupNorm.
"""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(
    model_cfg: DictConfig,
    in_shape: tuple[int, int, int],
    n_classes: int,
    *,
    dp_compatible: bool = False,
):
    """Instantiate ``model_cfg`` and dry-run it on one zero image of ``in_shape``.

    ``dp_compatible=True`` (any ``privacy`` other than ``none``, on sites and server alike)
    passes the network through Opacus's ``ModuleValidator.fix`` (BatchNorm to GroupNorm).

    Raises ``ValueError`` naming the model and the shape when the network cannot process it
    (for example DenseNet-121 below 32 px) or gives the wrong number of outputs, so that a
    mismatched config fails at start, not after data loading.
    """
    model = instantiate(model_cfg)
    if dp_compatible:
        from task.privacy.dpsgd import make_compatible

        model = make_compatible(model)
    target = model_cfg.get("_target_", type(model).__name__)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *in_shape))
    except RuntimeError as err:
        raise ValueError(
            f"model {target} cannot process images of shape {tuple(in_shape)}: {err}"
        ) from err
    if out.shape != (2, n_classes):
        raise ValueError(
            f"model {target} gives outputs of shape {tuple(out.shape[1:])} for "
            f"{n_classes} classes; set its number of outputs to {n_classes}"
        )
    model.train()
    return model
