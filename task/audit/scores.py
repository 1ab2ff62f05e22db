"""How much a reconstruction shows: MONAI's SSIM and PSNR, and MSE, on the [0, 1] scale.

For a batch the reconstructions are matched one to one with the true images so that the
total SSIM is largest (the attacker's order is arbitrary); the scores are the means over
the matched pairs, and each true image's best match is reported too. :func:`prior_ssim`
gives the baseline a reconstruction must beat to show anything about a patient.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from scipy.optimize import linear_sum_assignment


def pairwise_ssim(recon: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """SSIM of every reconstruction (rows) against every true image (columns)."""
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, win_size=7)
    r = recon.repeat_interleave(len(truth), dim=0)
    t = truth.repeat(len(recon), 1, 1, 1)
    return metric(r, t).reshape(len(recon), len(truth)).numpy()


def prior_ssim(prior: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean SSIM of one ``prior`` image (the training set's mean image) against ``truth``.

    The baseline an attacker reaches with no update at all: chest radiographs resemble one
    another, so a generic image already scores far above zero, and only SSIM *above* this
    baseline says that something about these patients leaked.
    """
    return float(pairwise_ssim(prior.float().clamp(0, 1), truth.float().clamp(0, 1)).mean())


def score(recon: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean SSIM, PSNR and MSE over the best one-to-one matching; images in [0, 1]."""
    recon, truth = recon.float().clamp(0, 1), truth.float().clamp(0, 1)
    ssim = pairwise_ssim(recon, truth)
    rows, cols = linear_sum_assignment(-ssim)
    r, t = recon[rows], truth[cols]
    psnr = PSNRMetric(max_val=1.0)(r, t).reshape(-1)
    mse = (r - t).pow(2).mean(dim=(1, 2, 3))
    return {
        "ssim": float(ssim[rows, cols].mean()),
        "psnr": float(psnr.mean()),
        "mse": float(mse.mean()),
        "ssim_best_per_image": float(ssim.max(axis=0).mean()),
    }
