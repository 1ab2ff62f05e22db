"""The key stages of secure aggregation never import torch, MONAI or the images.

A deployed SuperNode starts one process per message, so whatever a handler's module imports
is paid on every message. Each message a site receives in a real secure round (in-process
grid, real ClientApp) is replayed here in a fresh interpreter in which importing torch,
MONAI, Pillow, pydicom, Opacus or scikit-learn fails. The key stages (advertise, share,
consistency, unmask) must answer there; the train message, replayed the same way, must fail
on the blocked import: the control that shows the blocker blocks.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity
from hydra.utils import instantiate

from client.client_app import make_client_app
from mpc.secagg.identity import write_identities
from task.config import compose_config
from task.constants import REPO_ROOT
from task.models.factory import build_model
from tests.inprocess_grid import InProcessGrid, _stage

BASE = [
    "data.limit=240",
    "federation.local_steps=2",
    "train.batch_size=16",
    "model=small_cnn",
    "model.channels=[4,8,8,8]",
    "logger=none",
    "secure=smpc",
]
HEAVY = ("torch", "monai", "PIL", "pydicom", "opacus", "sklearn")

REPLAY = f"""
import importlib.abc, json, pickle, sys, time

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ImportError(f"blocked import of {{name}}")
        return None

sys.meta_path.insert(0, Blocked())
t0 = time.perf_counter()
from flwr.supercore.task_identity import TaskIdentity
from client.client_app import make_client_app
t1 = time.perf_counter()
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
with open(sys.argv[1], "rb") as fh:
    msg, context, overrides = pickle.load(fh)
try:
    reply = make_client_app(overrides)(msg, context)
    error = reply.error.reason if reply.has_error() else None
except Exception as err:  # what Flower's runtime turns into an error reply
    error = f"{{type(err).__name__}}: {{err}}"
print(json.dumps({{"error": error, "import_seconds": t1 - t0,
                  "seconds": time.perf_counter() - t0}}))
"""


def _replay(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", REPLAY, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> dict[str, Path]:
    """Every message site 101 receives in one secure training round, pickled with its
    context as it was on arrival: ``{stage: path}``."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    folder = tmp_path_factory.mktemp("messages")
    roster = write_identities(folder / "ids", [f"site-{i}" for i in range(3)])
    overrides = [*BASE, f"secure.roster={roster}"]
    cfg = compose_config(overrides)
    strategy = instantiate(cfg.secure)(instantiate(cfg.strategy))
    arrays = ArrayRecord(build_model(cfg.model, (1, 28, 28), 2).state_dict())
    grid = InProcessGrid(make_client_app(overrides))
    paths: dict[str, Path] = {}
    real_app = grid.app

    def capturing(msg, context):
        if msg.metadata.dst_node_id == 101:
            paths[_stage(msg)] = folder / f"{_stage(msg)}.pkl"
            paths[_stage(msg)].write_bytes(pickle.dumps((msg, context, overrides)))
        return real_app(msg, context)

    grid.app = capturing
    messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
    result, _ = strategy.aggregate_train(1, grid.send_and_receive(list(messages)))
    assert result is not None  # the round itself succeeded in this process
    return paths


@pytest.mark.parametrize("stage", ["advertise", "share", "consistency", "unmask"])
def test_a_key_stage_answers_without_torch_monai_or_the_images(captured, stage) -> None:
    reply = _replay(captured[stage])
    assert reply["error"] is None, reply


def test_control_the_train_message_needs_the_blocked_modules(captured) -> None:
    reply = _replay(captured["mask"])
    assert reply["error"] is not None and "blocked import of" in reply["error"], reply
