"""``scripts.fedavg_reference``: the federation without Flower, timed from its imports."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.fedavg_reference import main
from tests.task.federation.test_reference import TINY


def test_writes_the_timing_and_the_last_round(tmp_path: Path) -> None:
    out = tmp_path / "reference.json"
    summary = main(["--out", str(out), *TINY])
    assert json.loads(out.read_text()) == json.loads(json.dumps(summary))
    assert summary["overrides"] == TINY
    # The clock starts before the imports: the total covers imports, loading and rounds.
    assert summary["seconds"] >= summary["import_seconds"] + summary["run_seconds"] > 0
    assert summary["last_round"]["round"] == 2
    assert -1.0 <= summary["last_round"]["mcc"] <= 1.0
