"""The audit's outputs for people: PNG grids and a Markdown report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def save_grid(truth: torch.Tensor, recon: torch.Tensor, path: Path, title: str = "") -> Path:
    """Originals (top row) above reconstructions (bottom row), images in [0, 1]."""
    n = max(len(truth), len(recon))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n + 0.4, 3.2), squeeze=False)
    for row, batch in enumerate((truth, recon)):
        for i in range(n):
            ax = axes[row][i]
            ax.axis("off")
            if i < len(batch):
                ax.imshow(batch[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0][0].set_title("original", fontsize=8, loc="left")
    axes[1][0].set_title("reconstruction", fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _eps_lines(federation: dict[str, Any] | None) -> list[str]:
    if not federation:
        return ["No DP federation was given (`audit.federation_metrics`)."]
    privacy = federation.get("privacy") or {}
    mode = privacy.get("mode", "none")
    if mode == "local_dp":
        return [
            f"Local DP federation, δ = {privacy['delta']:g}: ε per site "
            + ", ".join(f"{s} {e:.2f}" for s, e in privacy["sites"].items())
        ]
    if mode == "central_dp":
        return [f"Central DP federation, δ = {privacy['delta']:g}: ε {privacy['epsilon']:.2f}"]
    return ["The given federation ran without differential privacy."]


def _view(entry: dict[str, Any]) -> str:
    """The view's name, with the sites' checks for the malicious-server view."""
    checks = entry.get("server_checks")
    return f"{entry['view']}, checks {checks}" if checks else entry["view"]


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_report(result: dict[str, Any], path: Path) -> Path:
    """``report.md``: the attack table, ε, model inversion, verdicts and the grids."""
    dp = result["dp"]
    lines = [
        "# Privacy audit",
        "",
        "Gradient inversion (Inverting Gradients, Geiping et al. 2020; DLG as the baseline) "
        "against what the server sees of one local step, labels given to the attacker, the "
        "victim's step replayed exactly (dropout off, BatchNorm in inference mode): an upper "
        "bound on what leaks. Scores compare each reconstruction with its true image "
        "(best one-to-one match in a batch) on the [0, 1] scale: SSIM and PSNR from "
        "`monai.metrics`, and MSE. Views: `plain`, one site's update; `dp`, the same under "
        "local DP-SGD; `secure`, the secure sum of the sites' one-step updates (a federation "
        "with `local_steps=1`); `secure_round`, the secure sum of the sites' whole rounds (a "
        "local epoch each, as the default federation trains), scored against every image the "
        "target site trained on; `malicious_server`, the model-inconsistency attack (Pasquini "
        "et al. 2022) on the secure sum of the sites at batch 1 only: the server sends the "
        "target the real model and the other sites a zero model, whose updates it predicts "
        "and subtracts from the sum, once with the sites' checks against an active server "
        "off (a test-only switch) and once on, as every federation runs. With the checks on "
        "there is nothing to invert: no SSIM, and the verdict says why.",
        "",
        f"Local DP view: Opacus DP-SGD step at σ = {dp['noise_multiplier']:.3f}, clipping "
        f"{dp['max_grad_norm']}, the σ a site of the default federation uses for "
        f"ε = {dp['epsilon']:g} at δ = {dp['delta']:g}.",
        "",
        *_eps_lines(result.get("federation")),
        "",
        "Prior: the SSIM of the training set's mean image with the same true images, what "
        "an attacker reaches with no update at all. Only SSIM above it shows a patient.",
        "",
        "| view | batch | attack | SSIM | prior SSIM | PSNR (dB) | MSE | seconds | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in result["gradient_inversion"]:
        lines.append(
            f"| {_view(e)} | {e['batch_size']} | {e['attack'] or '—'} | {_num(e['ssim'], 3)} | "
            f"{e['prior_ssim']:.3f} | {_num(e['psnr'], 2)} | {_num(e['mse'], 4)} | "
            f"{_num(e['seconds'], 1)} | {e['verdict']} |"
        )
    lines += [
        "",
        "## Model inversion of the trained model",
        "",
        "| class | SSIM to nearest training image | prior SSIM (class mean) | PSNR (dB) | MSE "
        "| verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in result["model_inversion"]:
        lines.append(
            f"| {e['class']} | {e['ssim']:.3f} | {e['prior_ssim']:.3f} | "
            f"{e['psnr']:.2f} | {e['mse']:.4f} | "
            f"{e['verdict']} |"
        )
    lines += ["", "## Reconstructions", ""]
    for e in [*result["gradient_inversion"], *result["model_inversion"]]:
        if e["grid"]:
            lines.append(f"![{_view(e) if 'view' in e else e['class']}]({e['grid']})")
    path.write_text("\n".join(lines) + "\n")
    return path
