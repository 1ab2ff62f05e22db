"""Centralised baseline: ``python -m scripts.train_central [hydra overrides]``.

Writes ``metrics.json``, ``roc.png``, ``confusion_matrix.png``, ``curves.png``,
``report.html`` and the checkpoints ``best.pt`` / ``last.pt`` (and ``final.pt``, the reported
weights with ``train.selection=last``, the default) to the Hydra run directory. Returns the
best validation MCC, which Hydra sweepers maximise.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scripts.user_errors import one_line_errors
from task.config import register_resolvers
from task.evaluation.html_report import write_html_report
from task.training.central import run

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_central")
@one_line_errors
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    metrics = run(cfg, run_dir)
    write_html_report(run_dir)
    return float(metrics["val"]["mcc"])


if __name__ == "__main__":
    main()
