"""The coordinator's side of a federation (Flower only through the grid and strategy).

:func:`run_federation` reads top-down, as Flower's quickstart ``server_app.py``: the run's
settings (checked once, and resuming from the ``last.pt`` that ``resume`` names), the
optional secure normalisation, the global model, the aggregation, the rounds, and the
final report (:mod:`server.final_report`), which tests the round that
``federation.selection`` names on the test split, which never leaves the server. Each
round is checkpointed atomically by :class:`server.recorder.RoundRecorder`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from hydra.utils import instantiate
from monai.utils import set_determinism
from omegaconf import DictConfig, OmegaConf

from mpc.secagg.wire import secure_enabled
from server.final_report import final_report
from server.normalisation import federation_intensity
from server.privacy import FederationPrivacy, federation_privacy
from server.recorder import RoundRecorder
from strategies.checkpointed import CheckpointedStrategy
from task.config import with_normalisation
from task.constants import NORM_MEAN, NORM_STD, REPO_ROOT
from task.data.loading import load_data
from task.federation.settings import check_federated_config
from task.models.factory import build_model
from task.privacy import privacy_of
from task.runtime import checkpoint
from task.runtime.run_options import resume_path

log = logging.getLogger(__name__)


def resolve_run_dir(cfg: DictConfig) -> Path:
    """Where the server writes: ``run_dir``; a resumed run's own directory (its history,
    checkpoints and the sites' ledgers are there); else a new time-stamped folder."""
    resume = resume_path(cfg.get("resume"))
    if resume is not None:
        if cfg.get("run_dir") and Path(cfg.run_dir).resolve() != resume.parent.resolve():
            raise ValueError(
                f"resume={resume} goes on in its own run directory {resume.parent}, "
                f"not run_dir={cfg.run_dir}"
            )
        return resume.parent
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return REPO_ROOT / "outputs" / cfg.task_name / stamp


@dataclass
class RunSettings:
    """A federation's settings, checked before any site is contacted."""

    run_dir: Path
    state: dict[str, Any] | None  # the checkpoint resumed from, if any
    start_round: int
    privacy: FederationPrivacy
    selection: str


def settings(cfg: DictConfig) -> RunSettings:
    """The run directory, the checkpoint to resume from, and the checked settings: a bad
    value fails here, not at the sites' first round."""
    federation = check_federated_config(cfg)
    resume = resume_path(cfg.get("resume"))
    if resume is not None and not resume.is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint")
    run_dir = resolve_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    state, start_round = None, 1
    if resume is not None:
        state = checkpoint.load(resume)
        start_round = state["round"] + 1
        log.info("resuming %s after round %d", run_dir, state["round"])
    kind = privacy_of(cfg)
    privacy = federation_privacy(kind, cfg, state.get("privacy") if state else None)
    return RunSettings(run_dir, state, start_round, privacy, federation.selection)


def aggregation(cfg: DictConfig, run: RunSettings):
    """The configured strategy, wrapped in secure aggregation with ``secure=smpc`` (the
    server then also checks the revealed mean against the sites' update bound)."""
    secure = secure_enabled(cfg)
    options = run.privacy.option.secure_options(secure)
    if secure:
        options["max_update_norm"] = cfg.federation.max_update_norm
    return instantiate(cfg.secure)(instantiate(cfg.strategy), **options)


def normalisation(
    cfg: DictConfig, aggregated, grid: Grid, run: RunSettings
) -> tuple[DictConfig, dict[str, float] | None, ConfigRecord]:
    """The federation's intensity statistics (resumed, or computed by a secure sum when
    ``federation.secure_normalisation``): the config that uses them, the statistics, and
    the round config that sends them to the sites."""
    fed = cfg.federation
    stats = run.state.get("normalisation") if run.state is not None else None
    if fed.secure_normalisation and stats is None:
        mean, std = federation_intensity(
            aggregated, grid, fed.min_available_sites, fed.round_timeout
        )
        stats = {"mean": mean, "std": std}
    if stats is None:
        return cfg, None, ConfigRecord()
    cfg = with_normalisation(cfg, stats["mean"], stats["std"])
    return cfg, stats, ConfigRecord({NORM_MEAN: stats["mean"], NORM_STD: stats["std"]})


def global_model(cfg: DictConfig, run: RunSettings):
    """The data the server keeps (its test split), the global model, and its arrays."""
    data = load_data(cfg.data, cfg.transforms.preprocess)
    dp = run.privacy.enabled
    model = build_model(cfg.model, data.in_shape, len(data.classes), dp_compatible=dp)
    run.privacy.option.check_network(model, data.in_shape)
    if run.state is not None:
        # Through the model, so that the global arrays have its dtypes (checkpoints written
        # before the dtype fix in CheckpointedStrategy hold float64 BatchNorm counters).
        model.load_state_dict(run.state["arrays"])
    return data, model, ArrayRecord(model.state_dict())


def rounds(
    cfg: DictConfig,
    grid: Grid,
    run: RunSettings,
    aggregated,
    recorder: RoundRecorder,
    arrays: ArrayRecord,
    round_config: ConfigRecord,
) -> CheckpointedStrategy:
    """Run the remaining rounds; the strategy (whether privacy stopped it early)."""
    fed = cfg.federation
    tracker = run.privacy
    strategy = CheckpointedStrategy(
        aggregated,
        seed=cfg.seed,
        on_round_end=recorder,
        start_round=run.start_round,
        should_stop=tracker.should_stop if tracker.enabled else None,
        max_update_norm=fed.max_update_norm,
        ema_decay=fed.ema_decay,
    )
    if run.state is not None:
        strategy.load_state_dict(run.state["strategy"])
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=fed.num_rounds,
        timeout=fed.round_timeout,
        train_config=round_config,
        evaluate_config=ConfigRecord(dict(round_config.items())),
    )
    return strategy


def run_federation(cfg: DictConfig, grid: Grid) -> dict[str, Any]:
    """Run (or resume) a federation on ``grid``; returns the final metrics."""
    t_start = time.perf_counter()
    set_determinism(seed=cfg.seed)
    run = settings(cfg)
    aggregated = aggregation(cfg, run)
    cfg, stats, round_config = normalisation(cfg, aggregated, grid, run)
    data, model, arrays = global_model(cfg, run)
    logger = instantiate(cfg.logger)
    logger.start(run.run_dir, OmegaConf.to_container(cfg, resolve=True), name=cfg.get("run_name"))
    recorder = RoundRecorder(run.run_dir, cfg, logger, run.state, data.classes, stats, run.privacy)
    t_rounds = time.perf_counter()
    strategy = rounds(cfg, grid, run, aggregated, recorder, arrays, round_config)
    rounds_seconds = time.perf_counter() - t_rounds
    return final_report(
        cfg,
        run,
        recorder,
        strategy,
        model,
        data,
        stats,
        logger,
        rounds_seconds=rounds_seconds,
        t_start=t_start,
    )
