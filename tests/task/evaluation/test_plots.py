"""Plots: a curve no history row holds gets no panel."""

from __future__ import annotations

from PIL import Image

from task.evaluation.plots import plot_curves


def test_a_key_no_row_holds_gets_no_panel(tmp_path) -> None:
    # a local-DP federation's history: no train_loss (the sites do not send it)
    history = [{"round": r, "val_auc": 0.9 + r / 100} for r in (1, 2, 3)]
    one = plot_curves(history, ("train_loss", "val_auc"), tmp_path / "one.png", "round")
    both = [{**h, "train_loss": 0.5} for h in history]
    two = plot_curves(both, ("train_loss", "val_auc"), tmp_path / "two.png", "round")
    width_one, width_two = Image.open(one).size[0], Image.open(two).size[0]
    assert width_two == 2 * width_one  # 4 inches a panel
