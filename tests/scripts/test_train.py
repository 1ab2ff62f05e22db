"""Federated simulation end to end: real Flower simulation runtime, real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from client.site_log import LOG_FILE
from client.site_log_verify import read_entries, verify
from task.config import compose_config
from task.constants import REPO_ROOT
from task.federation.reference import fedavg_reference
from task.models.factory import build_model
from tests.wandb_offline import history as wandb_history
from tests.wandb_offline import offline_runs

pytestmark = pytest.mark.slow

QUICK = [
    "data.limit=300",
    "federation.num_rounds=3",
    "train.batch_size=32",
    "model=small_cnn",
    "model.channels=[8,16,32,64]",
    "metrics.n_bootstrap=50",
]


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "scripts.train", *QUICK, *extra, f"hydra.run.dir={run_dir}"]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "HYDRA_FULL_ERROR": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def _call(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root, output captured, whatever its exit status."""
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def _run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` and require it to succeed."""
    proc = _call(cmd, timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted default simulation (secure aggregation, wandb offline): checked
    by the first test, and the reference the killed-and-resumed run must end at."""
    run_dir = tmp_path_factory.mktemp("straight") / "sim"
    return run_dir, _run(_cmd(run_dir))


def _check_console(console: str, run_dir: Path, rounds: int) -> None:
    """What a person reads: one line per round, no line twice, no INFO log line, no
    third-party warning (the Flower deprecation notice of run_simulation aside, issue 28);
    the run directory's log keeps the INFO lines."""
    lines = [line for line in console.splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("round ")]) == rounds
    assert len(lines) == len(set(lines)), [line for line in lines if lines.count(line) > 1]
    assert not [line for line in lines if "][INFO]" in line or "Warning:" in line], lines
    assert "[flwr][INFO]" in (run_dir / "train.log").read_text()


def test_simulation_writes_metrics_history_and_reveals_only_totals(straight) -> None:
    run_dir, proc = straight
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    assert {"auc", "accuracy", "mcc"} <= set(metrics["test"])
    assert metrics["test"]["auc"] > 0.7
    assert [h["round"] for h in history] == [1, 2, 3]
    assert metrics["best_round"] == 1 + max(range(3), key=lambda i: history[i]["evaluate"]["mcc"])
    # The default rule tests the last round (issue 24), and writes it as final.pt.
    assert (metrics["selection"], metrics["tested_round"]) == ("last", 3)
    assert (run_dir / "final.pt").is_file()
    for h in history:
        assert set(h["sites"]) == {"site-0", "site-1", "site-2"}
        # secure aggregation (the default): the server learns federation totals only
        assert h["train"]["num-examples"] > 0 and h["train"]["secure-sites"] == 3
        assert all(s["train"] == {} and s["evaluate"] == {} for s in h["sites"].values())
        assert h["failures"] == {"train": 0, "evaluate": 0}
    for name in ("roc.png", "curves.png", "best.pt", "last.pt"):
        assert (run_dir / name).is_file()
    assert list((run_dir / "wandb").glob("offline-run-*"))
    # data.limit=300: the test split is not PneumoniaMNIST's published one, so no word of
    # the expert readers (issue 28).
    assert "expert_readers" not in metrics
    assert "xpert" not in proc.stdout
    _check_console(proc.stdout + proc.stderr, run_dir, rounds=3)
    # Each site's audit log verifies and holds every reply it sent, in one run, in order.
    run_ids = set()
    for site in ("site-0", "site-1", "site-2"):
        path = run_dir / "sites" / site / LOG_FILE
        summary = verify(path)
        entries = read_entries(path)[1:]
        assert summary.site == site and summary.errors == 0 and summary.rounds[-1] == 3
        run_ids |= {e["run_id"] for e in entries}
        rounds = [e["round"] for e in entries if e["round"] is not None]
        assert rounds == sorted(rounds)
        for kind in ("train", "evaluate"):
            sent = [e for e in entries if e["message_type"] == kind]
            assert {e["round"] for e in sent} == {1, 2, 3}, kind
            assert all(e["secagg"]["stage"] == "mask" for e in sent)  # masked, as sent
        keys = {e["secagg"]["stage"] for e in entries if e["message_type"] == "query.secagg"}
        assert keys == {"advertise", "share", "consistency", "unmask"}
    assert len(run_ids) == 1


def test_the_federation_writes_its_report_and_its_dashboard(straight) -> None:
    """report.html beside metrics.json, and one offline wandb run whose rounds hold each
    site's participation and secure aggregation's stage timings (issue 28, items 5 and 7)."""
    run_dir, _ = straight
    html = (run_dir / "report.html").read_text()
    for title in ("Metrics (test)", "Federation history", "Secure aggregation"):
        assert f"<h2>{title}</h2>" in html
    history = json.loads((run_dir / "history.json").read_text())
    assert "advertise" in history[0]["secure_seconds"]  # later rounds' keys come early
    for h in history:
        assert {"share", "consistency", "unmask"} <= set(h["secure_seconds"])
    (run_file,) = offline_runs(run_dir / "wandb")
    rows = {row["_step"]: row for row in wandb_history(run_file)}
    for r in (1, 2, 3):
        assert all(rows[r][f"site/site-{i}/participated"] == 1 for i in range(3))
        assert rows[r]["secagg/unmask_seconds"] > 0
        assert rows[r]["global/val_auc"] == history[r - 1]["evaluate"]["auc"]


def test_killed_server_resumes_to_same_final_weights(straight, tmp_path: Path) -> None:
    """The run killed after a checkpoint and resumed ends where ``straight`` ended (the
    logger, off here, does not touch the arithmetic)."""
    straight_dir, _ = straight
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(killed, "logger=none"),
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the server process and its simulated sites
    proc.wait()
    first = torch.load(killed / "last.pt", weights_only=True)
    assert first["round"] < 3
    # Resumed with PriMIA's selection rule (it does not touch the arithmetic): the round
    # with the best pooled validation MCC is tested.
    _run(
        _cmd(killed, "logger=none", f"resume={killed / 'last.pt'}", "federation.selection=val_mcc")
    )

    a = torch.load(straight_dir / "last.pt", weights_only=True)
    b = torch.load(killed / "last.pt", weights_only=True)
    assert a["round"] == b["round"] == 3
    for key, value in a["arrays"].items():
        assert torch.equal(value, b["arrays"][key]), key
    # The moving average the sites validated resumes exactly too (federation.ema_decay).
    assert a["evaluated_arrays"].keys() == a["arrays"].keys()
    for key, value in a["evaluated_arrays"].items():
        assert torch.equal(value, b["evaluated_arrays"][key]), key
    history = json.loads((killed / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2, 3]
    metrics = json.loads((killed / "metrics.json").read_text())
    best = 1 + max(range(3), key=lambda i: history[i]["evaluate"]["mcc"])
    assert (metrics["selection"], metrics["tested_round"]) == ("val_mcc", best)
    assert metrics["val"] == history[best - 1]["evaluate"]
    best_pt = torch.load(killed / "best.pt", weights_only=True)
    assert best_pt["round"] == best

    # Flower adds nothing to the arithmetic: the same federation without Flower (plain
    # example-weighted FedAvg over the same loops) ends at the same model. Compared by its
    # outputs: conv biases just before BatchNorm get no true gradient, so Adam turns float
    # round-off (which depends on summation order) into steps that BatchNorm then cancels.
    cfg = compose_config([*QUICK, "logger=none"])
    reference = fedavg_reference(cfg)
    pooled = [h["evaluate"]["mcc"] for h in history]
    assert pooled == pytest.approx([h["mcc"] for h in reference["history"]], abs=0.02)
    data = instantiate(cfg.data).load(instantiate(cfg.transforms.preprocess))
    images = torch.from_numpy(data.test.images[:200])
    logits = []
    for state in (a["evaluated_arrays"], reference["validated_state"]):
        model = build_model(cfg.model, data.in_shape, 2)
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            logits.append(model(images))
    torch.testing.assert_close(logits[0], logits[1], atol=5e-3, rtol=1e-3)
    assert torch.equal(logits[0].argmax(1), logits[1].argmax(1))


def test_optuna_sweep_runs_whole_federations_and_reports_best(tmp_path: Path) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "scripts.train",
            "-m",
            "hparams_search=federated_optuna",
            "experiment=fed_quick",
            "federation.num_rounds=1",
            "logger=none",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweep.dir={tmp_path}",
        ],
        timeout=900,
    )
    best = (tmp_path / "optimization_results.yaml").read_text()
    assert "best_params" in best and "best_value" in best
    trials = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(trials) == 2
    values = [json.loads((t / "metrics.json").read_text())["val"]["mcc"] for t in trials]
    assert f"best_value: {max(values)}" in best
