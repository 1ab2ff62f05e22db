"""Flower's ``Message`` needs a task identity; the wire tests build messages without a
Flower process (the strategies' conftest does the same for its own tests)."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
