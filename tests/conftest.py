"""Shared fixtures. Data comes from ../shared/data (never downloaded in tests).

Fuzz tests (hypothesis) run under a bounded, reproducible profile: ``ci`` (the default) runs
a fixed set of examples chosen from each test's name; ``HYPOTHESIS_PROFILE=fuzz`` runs
many more, freshly random each time, for a longer search on a workstation.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import settings

from task.config import register_resolvers
from task.constants import DATA_ENV_VAR, DEFAULT_PNEUMONIAMNIST

register_resolvers()
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

# No example database: CI replays the same examples from the seed, and a failure prints
# its reproduction blob (print_blob) to paste into @reproduce_failure.
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=timedelta(seconds=5),
    derandomize=True,
    database=None,
    print_blob=True,
)
settings.register_profile(
    "fuzz", max_examples=3000, deadline=timedelta(seconds=20), database=None, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``gpu``-marked tests where torch sees no CUDA GPU (CI has none): they check
    the CUDA path (docs/gpu.md), which the CPU tests cannot reach."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def pneumoniamnist_path() -> Path:
    path = Path(os.environ.get(DATA_ENV_VAR) or DEFAULT_PNEUMONIAMNIST)
    if not path.is_file():
        pytest.fail(f"{path} missing: the tests read PneumoniaMNIST from ../shared/data")
    return path


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, pneumoniamnist_path) -> Path:
    """The federated default model (small_cnn) trained briefly (30 steps) by the real
    centralised loop: its ``final.pt`` carries weights, BatchNorm statistics and the
    inference config."""
    from task.training.brief import brief_checkpoint

    return brief_checkpoint("small_cnn", 30, tmp_path_factory.mktemp("trained"))
