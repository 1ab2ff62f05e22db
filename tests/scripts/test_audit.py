"""``python -m scripts.audit`` end to end, scaled down: real files, every view, a report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.scripts.test_train import _call, _run

pytestmark = pytest.mark.slow

AUDIT = [sys.executable, "-m", "scripts.audit"]


def test_audit_writes_json_report_and_grids(tmp_path: Path) -> None:
    federation = tmp_path / "metrics.json"
    federation.write_text(
        json.dumps({"privacy": {"mode": "local_dp", "delta": 1e-5, "sites": {"site-0": 2.99}}})
    )
    run_dir = tmp_path / "audit"
    _run(
        [
            *AUDIT,
            "audit.batch_sizes=[1,2]",
            "audit.round_images=4",
            "audit.attack.steps=20",
            "audit.dlg_steps=20",
            "audit.model_inversion.steps=20",
            "audit.model_inversion.brief_steps=5",
            f"audit.federation_metrics={federation}",
            f"hydra.run.dir={run_dir}",
        ]
    )
    audit = json.loads((run_dir / "audit.json").read_text())
    entries = audit["gradient_inversion"]
    assert {(e["view"], e["batch_size"]) for e in entries} == {
        (v, b) for v in ("plain", "dp", "secure", "secure_round") for b in (1, 2)
    } | {("malicious_server", 1)}  # the model-inconsistency attack runs at batch 1 only
    assert {e["images_per_site"] for e in entries if e["view"] == "secure_round"} == {4}
    assert {e["attack"] for e in entries if e["view"] == "plain"} == {"inverting_gradients", "dlg"}
    malicious = {e["server_checks"]: e for e in entries if e["view"] == "malicious_server"}
    assert set(malicious) == {"off", "on"}
    refused = malicious["on"]
    assert refused["ssim"] is None and refused["grid"] is None
    assert refused["masked_inputs_received"] == 0
    assert refused["verdict"].startswith("refused by the sites: ")
    assert refused["verdict"].endswith("; the attacker received nothing")
    for e in [*entries, *audit["model_inversion"]]:
        if e is refused:
            continue
        assert -1 <= e["ssim"] <= 1 and e["mse"] >= 0 and e["verdict"]
        assert (run_dir / e["grid"]).is_file()
    assert [e["class"] for e in audit["model_inversion"]] == ["normal", "pneumonia"]
    report = (run_dir / "report.md").read_text()
    assert "| secure | 2 | inverting_gradients |" in report
    assert "| secure_round | 2 | inverting_gradients |" in report
    assert "| malicious_server, checks off | 1 | inverting_gradients |" in report
    assert "| malicious_server, checks on | 1 | — | — |" in report
    assert "the attacker received nothing |" in report
    assert "site-0 2.99" in report


def test_unknown_view_is_refused(tmp_path: Path) -> None:
    proc = _call([*AUDIT, "audit.views=[plain,server]", f"hydra.run.dir={tmp_path}"], timeout=300)
    assert proc.returncode != 0
    assert "audit.views has ['server']" in proc.stdout + proc.stderr


def test_round_images_must_split_into_every_batch(tmp_path: Path) -> None:
    proc = _call(
        [*AUDIT, "audit.batch_sizes=[1,3]", "audit.round_images=4", f"hydra.run.dir={tmp_path}"],
        timeout=300,
    )
    assert proc.returncode != 0
    assert "audit.round_images=4 is not a multiple of batch 3" in proc.stdout + proc.stderr
