"""A real deployment: SuperLink + 3 SuperNodes over TLS with node authentication."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.deployment import LocalDeployment
from task.constants import REPO_ROOT

pytestmark = pytest.mark.slow


def test_three_sites_two_rounds_over_tls(tmp_path: Path) -> None:
    workdir = tmp_path / "deploy"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.deploy_local",
            "--sites",
            "3",
            "--rounds",
            "2",
            "--limit-per-site",
            "200",
            "--workdir",
            str(workdir),
            "--timeout",
            "900",
            "logger=none",
            "train.batch_size=32",
            "metrics.n_bootstrap=50",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    logs = workdir / "logs"
    assert proc.returncode == 0, (proc.stderr[-3000:], sorted(p.name for p in logs.iterdir()))
    summary = json.loads((workdir / "deployment.json").read_text())
    assert summary["rounds"] == 2 and summary["sites"] == 3
    assert summary["test"]["auc"] > 0.6
    history = json.loads((workdir / "run" / "history.json").read_text())
    assert set(history[-1]["sites"]) == {"site-0", "site-1", "site-2"}
    # secure aggregation (the default) ran across the real processes: all three sites'
    # masked updates and counts were summed, and no site metric reached the server.
    assert summary["secure"] == "strategies.secure.SecureAggregation"
    assert history[-1]["train"]["secure-sites"] == 3
    assert history[-1]["evaluate"]["secure-sites"] == 3
    assert all(kinds["evaluate"] == {} for kinds in history[-1]["sites"].values())
    # each site trained on its own folder of PNGs on disk
    assert all(len(list((workdir / "sites" / f"site-{i}").rglob("*.png"))) == 200 for i in range(3))
    superlink_log = (logs / "superlink.log").read_text()
    assert "TLS disabled" not in superlink_log
    # everything the script started is gone
    assert (
        subprocess.run(["pgrep", "-f", str(workdir)], capture_output=True, check=False).stdout
        == b""
    )


def test_unregistered_supernode_is_refused(tmp_path: Path) -> None:
    with LocalDeployment(tmp_path) as dep:
        dep.start_superlink()
        key, public = dep.new_node_key("registered")
        dep.register(public)
        intruder_key, _ = dep.new_node_key("intruder")  # never registered
        intruder = dep.start_supernode(
            "intruder", {"site-name": "intruder", "data-path": str(tmp_path)}, intruder_key
        )
        dep.start_supernode("registered", {"site-name": "ok", "data-path": str(tmp_path)}, key)
        deadline = time.monotonic() + 60
        while dep.connected_nodes() < 1 and time.monotonic() < deadline:
            time.sleep(1)
        assert dep.connected_nodes() == 1
        assert intruder.wait(timeout=60) != 0  # the SuperNode gives up: it cannot activate
        assert "Failed to activate SuperNode" in dep.log_tail("intruder", 200)
        assert "No SuperNode found with the given public key" in dep.log_tail("superlink", 400)
