"""Federated training in simulation: ``python -m scripts.train [hydra overrides]``.

Runs ``federation.num_sites`` simulated hospitals with Flower and writes ``metrics.json``,
``history.json``, plots and checkpoints to the Hydra run directory. Returns the pooled
validation MCC of the tested round, which Hydra sweepers maximise.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scripts.simulation import simulate
from scripts.user_errors import one_line_errors
from task.config import register_resolvers
from task.federation.settings import check_federated_config
from task.runtime.run_options import resume_path

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float:
    check_federated_config(cfg)
    hc = HydraConfig.get()
    resume = resume_path(cfg.resume)
    # A resumed federation goes on in its own run directory (server.federation).
    run_dir = resume.parent if resume is not None else Path(hc.runtime.output_dir)
    metrics = simulate(cfg, list(hc.overrides.task), run_dir)
    test = metrics["test"]
    print(
        f"\nFederated ({cfg.federation.num_sites} sites, tested round {metrics['tested_round']}): "
        f"test AUC {test['auc']:.3f} (95% CI {test['auc_ci']['low']:.3f}-"
        f"{test['auc_ci']['high']:.3f})  ACC {test['accuracy']:.3f}  MCC {test['mcc']:.3f}"
    )
    experts = metrics.get("expert_readers")  # only on PneumoniaMNIST's published test split
    if experts is not None:
        print(
            f"Expert readers (PriMIA study): ACC {experts['accuracy']:.3f}  "
            f"MCC {experts['mcc']:.3f}"
        )
    privacy = metrics.get("privacy") or {}
    if privacy.get("mode") == "local_dp":
        spent = ", ".join(f"{s} {e:.2f}" for s, e in privacy["sites"].items())
        print(f"Local DP (δ={privacy['delta']:g}): ε per site {spent}")
    elif privacy.get("mode") == "central_dp":
        print(f"Central DP (δ={privacy['delta']:g}): ε {privacy['epsilon']:.2f}")
    if privacy.get("stopped_early"):
        print(privacy["stopped_early"])
    return float(metrics["val"]["mcc"])


if __name__ == "__main__":
    main()
