"""The coordinator's side of a federation (Flower only through the grid and strategy).

Builds the global model and the configured strategy, resumes from the run directory's
``last.pt`` when ``resume=true``, checkpoints atomically after every round (global model,
strategy state, round, history, best round so far), and at the end evaluates the round that
``federation.selection`` names (the last, or the best pooled validation MCC) on the test
split, which never leaves the server. Writes
``metrics.json``, ``history.json``, the plots and one wandb run per federation.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig, OmegaConf

from mpc.secagg.wire import secure_enabled
from server.normalisation import federation_intensity
from server.privacy import FederationPrivacy
from strategies.checkpointed import CheckpointedStrategy, RoundRecord
from task import checkpoint
from task.calibration import has_calibration
from task.central import inference_config
from task.config import with_normalisation
from task.constants import (
    CHECKPOINT_BEST,
    CHECKPOINT_FINAL,
    CHECKPOINT_LAST,
    HISTORY_FILE,
    NORM_MEAN,
    NORM_STD,
    REPO_ROOT,
    SELECTIONS,
)
from task.engine import predict
from task.federated import uses_bf16
from task.metrics import clinical_metrics
from task.models import build_model, count_parameters
from task.privacy import CentralDP, LocalDP, privacy_of
from task.report import comparison_line, write_json, write_run_outputs

log = logging.getLogger(__name__)


def resolve_run_dir(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return REPO_ROOT / "outputs" / cfg.task_name / stamp


def _flat_row(record: dict[str, Any]) -> dict[str, Any]:
    """One history row as plain numbers for curves and the dashboard."""
    row = {"round": record["round"]}
    for kind, prefix in (("train", "train_"), ("evaluate", "val_")):
        for key, value in record[kind].items():
            if isinstance(value, int | float):
                row[prefix + key.replace("-", "_")] = value
    return row


class RoundRecorder:
    """``on_round_end`` callback: history, dashboard, best round and atomic checkpoints."""

    def __init__(
        self,
        run_dir: Path,
        cfg: DictConfig,
        logger,
        state: dict[str, Any] | None,
        classes: tuple[str, ...],
        normalisation: dict[str, float] | None = None,
        privacy: FederationPrivacy | None = None,
    ) -> None:
        self.run_dir, self.cfg, self.logger = run_dir, cfg, logger
        self.privacy = privacy
        state = state or {}
        self.history: list[dict[str, Any]] = list(state.get("history", []))
        self.best_round = state.get("best_round", 0)
        self.best_mcc = state.get("best_mcc", -float("inf"))
        self.best_arrays = state.get("best_arrays")
        # The weights last validated (the moving average with federation.ema_decay), which
        # federation.selection=last tests; checkpoints before the average hold "arrays" only.
        self.last_round = state.get("round", 0)
        self.last_arrays = state.get("evaluated_arrays", state.get("arrays"))
        self.model_config = inference_config(cfg, classes)
        if privacy is not None and privacy.enabled:
            # The network went through Opacus's ModuleValidator.fix (BatchNorm -> GroupNorm):
            # whoever rebuilds it from this config must do the same.
            self.model_config["dp_compatible"] = True
        self.normalisation = normalisation
        self._t_last = time.perf_counter()

    def __call__(
        self,
        record: RoundRecord,
        arrays: ArrayRecord,
        strategy_state: dict,
        evaluated: ArrayRecord | None = None,
    ) -> None:
        """Record a round: ``arrays`` is the global model (what a resumed run continues
        from), ``evaluated`` the weights the sites validated (the same unless the server
        keeps a moving average), which the best and last rounds keep for testing."""
        entry = record.to_dict()
        now = time.perf_counter()
        # Wall time of the round (training, evaluation and, with secure=smpc, the protocol).
        entry["seconds"], self._t_last = now - self._t_last, now
        if self.privacy is not None and self.privacy.enabled:
            entry["privacy"] = self.privacy.after_round(record)
        self.history.append(entry)
        weights = arrays.to_torch_state_dict()
        validated = (
            weights if evaluated is None or evaluated is arrays else evaluated.to_torch_state_dict()
        )
        self.last_round, self.last_arrays = record.round, validated
        mcc = entry["evaluate"].get("mcc")
        improved = mcc is not None and mcc > self.best_mcc
        if improved:
            self.best_round, self.best_mcc, self.best_arrays = record.round, mcc, validated
        state = {
            "round": record.round,
            "arrays": weights,
            "evaluated_arrays": validated,
            "strategy": strategy_state,
            "history": self.history,
            "best_round": self.best_round,
            "best_mcc": self.best_mcc,
            "best_arrays": self.best_arrays,
            "config": self.model_config,
            "normalisation": self.normalisation,
            "privacy": self.privacy.state() if self.privacy is not None else None,
        }
        checkpoint.save_atomic(state, self.run_dir / CHECKPOINT_LAST)
        if improved:
            checkpoint.save_atomic(
                {
                    "model": validated,
                    "round": record.round,
                    "val_mcc": mcc,
                    "config": self.model_config,
                },
                self.run_dir / CHECKPOINT_BEST,
            )
        write_json(self.history, self.run_dir / HISTORY_FILE)
        flat = {f"global/{k}": v for k, v in _flat_row(entry).items() if k != "round"}
        if "epsilon" in entry.get("privacy", {}):
            flat["global/privacy_epsilon"] = entry["privacy"]["epsilon"]
        for site, kinds in entry["sites"].items():
            for kind, metrics in kinds.items():
                for key, value in metrics.items():
                    if isinstance(value, int | float):
                        flat[f"{site}/{kind}_{key}"] = value
        self.logger.log(flat, step=record.round)
        log.info(
            "round %d: pooled val %s (best round %d, MCC %.4f); failures %s",
            record.round,
            {k: round(v, 4) for k, v in entry["evaluate"].items() if isinstance(v, float)},
            self.best_round,
            self.best_mcc,
            entry["failures"],
        )

    def tested(self, selection: str) -> tuple[int, dict[str, Any]]:
        """The round and global weights that ``selection`` tests: the best pooled
        validation MCC (``val_mcc``) or the last round (``last``)."""
        check_selection(selection)
        if selection == "last":
            round_, arrays = self.last_round, self.last_arrays
        else:
            round_, arrays = self.best_round, self.best_arrays
        if arrays is None:
            raise RuntimeError(
                f"no round of {self.run_dir} produced weights for federation.selection="
                f"{selection} (val_mcc needs a pooled validation MCC)"
            )
        return round_, arrays


def check_selection(selection: str) -> str:
    """``selection`` if it is one of :data:`SELECTIONS`; a ``ValueError`` naming it."""
    if selection not in SELECTIONS:
        raise ValueError(f"federation.selection={selection!r} is not one of {SELECTIONS}")
    return selection


def run_federation(cfg: DictConfig, grid: Grid) -> dict[str, Any]:
    """Run (or resume) a federation on ``grid``; returns the final metrics."""
    t_start = time.perf_counter()
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=cfg.seed)

    state, start_round = None, 1
    last = run_dir / CHECKPOINT_LAST
    if cfg.resume and last.is_file():
        state = checkpoint.load(last)
        start_round = state["round"] + 1
        log.info("resuming %s after round %d", run_dir, state["round"])
    elif cfg.resume:
        log.info("resume=true but %s has no %s: starting at round 1", run_dir, CHECKPOINT_LAST)

    privacy = privacy_of(cfg)
    uses_bf16(cfg)  # a bad train.precision fails the run here, not at the sites' first round
    selection = check_selection(cfg.federation.selection)  # and a bad selection here
    tracker = FederationPrivacy(privacy, cfg, state.get("privacy") if state else None)
    # secure=smpc wraps the aggregation in secure aggregation; secure=none leaves it as is.
    secure_options = {}
    if isinstance(privacy, CentralDP):
        if not secure_enabled(cfg):
            raise ValueError(
                "privacy=central_dp needs secure=smpc: each site adds only its share of the "
                "noise, so the server must never see an update in the clear"
            )
        secure_options["min_sites"] = privacy.min_sites
    if secure_enabled(cfg):  # the server checks the revealed mean against the sites' bound
        secure_options["max_update_norm"] = cfg.federation.max_update_norm
    aggregation = instantiate(cfg.secure)(instantiate(cfg.strategy), **secure_options)
    fed = cfg.federation
    round_config = ConfigRecord()
    normalisation = state.get("normalisation") if state is not None else None
    if fed.secure_normalisation and normalisation is None:
        mean, std = federation_intensity(
            aggregation, grid, fed.min_available_sites, fed.round_timeout
        )
        normalisation = {"mean": mean, "std": std}
    if normalisation is not None:
        cfg = with_normalisation(cfg, normalisation["mean"], normalisation["std"])
        round_config = ConfigRecord(
            {NORM_MEAN: normalisation["mean"], NORM_STD: normalisation["std"]}
        )

    data = instantiate(cfg.data).load(preprocess=instantiate(cfg.transforms.preprocess))
    classes = data.classes
    model = build_model(cfg.model, data.in_shape, len(classes), dp_compatible=tracker.enabled)
    if isinstance(privacy, LocalDP):  # a network Opacus cannot train fails here, not at round 1
        from task.privacy.dpsgd import check_per_example_gradients

        check_per_example_gradients(model, data.in_shape)
        if has_calibration(model):  # an ε the moments' release alone spends fails here
            privacy.calibration_history()
    if state is not None:
        # Through the model, so that the global arrays have its dtypes (checkpoints written
        # before the dtype fix in CheckpointedStrategy hold float64 BatchNorm counters).
        model.load_state_dict(state["arrays"])
    arrays = ArrayRecord(model.state_dict())

    logger = instantiate(cfg.logger)
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), name=cfg.get("run_name"))
    recorder = RoundRecorder(run_dir, cfg, logger, state, classes, normalisation, tracker)
    strategy = CheckpointedStrategy(
        aggregation,
        seed=cfg.seed,
        on_round_end=recorder,
        start_round=start_round,
        should_stop=tracker.should_stop if tracker.enabled else None,
        max_update_norm=fed.max_update_norm,
        ema_decay=fed.ema_decay,
    )
    if state is not None:
        strategy.load_state_dict(state["strategy"])

    t_rounds = time.perf_counter()
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=fed.num_rounds,
        timeout=fed.round_timeout,
        train_config=round_config,
        evaluate_config=ConfigRecord(dict(round_config.items())),
    )
    rounds_seconds = time.perf_counter() - t_rounds

    tested_round, tested_arrays = recorder.tested(selection)
    if selection == "last":
        checkpoint.save_atomic(
            {"model": tested_arrays, "round": tested_round, "config": recorder.model_config},
            run_dir / CHECKPOINT_FINAL,
        )
    model.load_state_dict(tested_arrays)
    probs, labels = predict(model, data.test.loader(cfg.train.eval_batch_size, shuffle=False))
    test = clinical_metrics(
        labels,
        probs,
        classes,
        n_bootstrap=cfg.metrics.n_bootstrap,
        level=cfg.metrics.ci_level,
        seed=cfg.seed,
    )
    tested_entry = next(h for h in recorder.history if h["round"] == tested_round)
    metrics = {
        "test": test,
        "val": tested_entry["evaluate"],
        "selection": selection,
        "ema_decay": fed.ema_decay,
        "tested_round": tested_round,
        "best_round": recorder.best_round,
        "rounds_run": len(recorder.history),
        "sites": {site: kinds.get("evaluate", {}) for site, kinds in tested_entry["sites"].items()},
        "failures": {
            "train": sum(h["failures"]["train"] for h in recorder.history),
            "evaluate": sum(h["failures"]["evaluate"] for h in recorder.history),
        },
        # Training replies refused before aggregation (checkpoints older than this key
        # have none recorded).
        "rejected": sum(len(h.get("rejected", {})) for h in recorder.history),
        "model": {"target": cfg.model._target_, "parameters": count_parameters(model)},
        "strategy": cfg.strategy._target_,
        "secure": cfg.secure._target_,
        "normalisation": normalisation,
        "privacy": tracker.summary(strategy.stopped),
        "num_sites": fed.num_sites,
        "seed": cfg.seed,
        "rounds_seconds": rounds_seconds,
        "wall_seconds": time.perf_counter() - t_start,
    }
    rows = [_flat_row(h) for h in recorder.history]
    metrics = write_run_outputs(
        run_dir,
        metrics,
        test_labels=labels,
        test_probs=probs,
        classes=classes,
        history=rows,
        curve_keys=("train_loss", "val_loss", "val_auc", "val_mcc"),
        xlabel="round",
    )
    logger.finish({f"test/{k}": test[k] for k in ("auc", "accuracy", "mcc")})
    log.info(comparison_line(test))
    print(comparison_line(test), flush=True)
    return metrics
