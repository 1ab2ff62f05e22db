"""Evaluate a trained checkpoint: ``python -m scripts.evaluate checkpoint=PATH [overrides]``.

Any ``best.pt`` / ``final.pt`` of a centralised or federated run, on the bundled split
(``data.split``), a folder of class subfolders or a CSV (``data.path``), with the
checkpoint's own preprocessing and classes. Writes ``metrics.json``, ``roc.png``,
``calibration.png``, ``confusion_matrix.png`` and ``predictions.csv`` to the Hydra run
directory (conf/evaluate.yaml; docs/evaluation.md).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scripts.user_errors import one_line_errors
from task.evaluation.evaluate import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@one_line_errors
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
