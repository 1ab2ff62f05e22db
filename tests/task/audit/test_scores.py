"""Reconstruction scores: MONAI SSIM / PSNR and MSE, matched one to one within a batch."""

from __future__ import annotations

import pytest
import torch

from task.audit.scores import score


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 7, 7, generator=g)
    return torch.nn.functional.interpolate(base, size=(28, 28), mode="bilinear")


def test_a_perfect_reconstruction_in_any_order_scores_one() -> None:
    truth = _images(4)
    s = score(truth[[2, 0, 3, 1]], truth)
    assert s["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert s["mse"] == pytest.approx(0.0, abs=1e-10)
    assert s["psnr"] > 60


def test_unrelated_images_score_low() -> None:
    s = score(_images(4, seed=1), _images(4, seed=2))
    assert s["ssim"] < 0.3 and s["mse"] > 0.02


def test_matching_is_one_to_one() -> None:
    truth = _images(2)
    recon = torch.stack([truth[0], truth[0]])  # one image found twice, the other missed
    s = score(recon, truth)
    assert s["ssim_best_per_image"] < 1.0 and s["ssim"] < 1.0
