"""What the coordinator keeps of each round: history, dashboard, best round, checkpoints.

:class:`RoundRecorder` is the strategy's ``on_round_end`` callback. Each round it adds the
round's entry to the history, accounts privacy, checkpoints atomically (what a resumed run
continues from, and the best round's weights), and logs one line to the console and the
dashboard. At the end it hands over the weights that ``federation.selection`` tests.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord
from omegaconf import DictConfig

from server.dashboard import dashboard_row
from server.privacy import FederationPrivacy
from strategies.round_record import RoundRecord
from task.constants import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    HISTORY_FILE,
    PROGRESS_LOGGER,
)
from task.evaluation.report import write_json
from task.federation.participation import site_names
from task.runtime import checkpoint
from task.training.central import inference_config

log = logging.getLogger(__name__)
progress = logging.getLogger(PROGRESS_LOGGER)


def flat_row(record: dict[str, Any]) -> dict[str, Any]:
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
        entry = self._entry(record)
        weights = arrays.to_torch_state_dict()
        validated = (
            weights if evaluated is None or evaluated is arrays else evaluated.to_torch_state_dict()
        )
        self.last_round, self.last_arrays = record.round, validated
        mcc = entry["evaluate"].get("mcc")
        improved = mcc is not None and mcc > self.best_mcc
        if improved:
            self.best_round, self.best_mcc, self.best_arrays = record.round, mcc, validated
        self._checkpoint(record.round, weights, validated, strategy_state, improved)
        write_json(self.history, self.run_dir / HISTORY_FILE)
        self._dashboard(entry)
        progress.info(
            "round %d: pooled val %s (best round %d, MCC %.4f); failures %s",
            record.round,
            {k: round(v, 4) for k, v in entry["evaluate"].items() if isinstance(v, float)},
            self.best_round,
            self.best_mcc,
            entry["failures"],
        )

    def _entry(self, record: RoundRecord) -> dict[str, Any]:
        """The round's history entry, with its wall time and privacy accounting."""
        entry = record.to_dict()
        now = time.perf_counter()
        # Wall time of the round (training, evaluation and, with secure=smpc, the protocol).
        entry["seconds"], self._t_last = now - self._t_last, now
        if self.privacy is not None and self.privacy.enabled:
            entry["privacy"] = self.privacy.after_round(record)
        self.history.append(entry)
        return entry

    def _checkpoint(
        self,
        round_: int,
        weights: dict,
        validated: dict,
        strategy_state: dict,
        improved: bool,
    ) -> None:
        """``last.pt`` (everything a resumed run needs), and ``best.pt`` when improved."""
        state = {
            "round": round_,
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
            best = {
                "model": validated,
                "round": round_,
                "val_mcc": self.best_mcc,
                "config": self.model_config,
            }
            checkpoint.save_atomic(best, self.run_dir / CHECKPOINT_BEST)

    def _dashboard(self, entry: dict[str, Any]) -> None:
        """The round's numbers to the logger (:mod:`server.dashboard` names them)."""
        row = dashboard_row(entry, flat_row(entry), site_names(self.history))
        self.logger.log(row, step=entry["round"])

    def tested(self, selection: str) -> tuple[int, dict[str, Any]]:
        """The round and global weights that ``selection`` tests: the best pooled
        validation MCC (``val_mcc``) or the last round (``last``); checked when the config
        was composed (:mod:`task.federation.settings`)."""
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
