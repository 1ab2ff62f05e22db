"""A real deployment: SuperLink + 3 SuperNodes over TLS with node authentication, and the
faults a hospital network brings: a site's machine dying mid-round, the coordinator's
SuperLink (with its ServerApp) dying and being restarted, and intruders at the door."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from scripts.deploy_local import SiteFederation, prepare_sites, start_sites
from scripts.local_deployment import DeploymentError, LocalDeployment
from server.pki import make_tls
from server.processes import descendants, stat_fields
from task.constants import REPO_ROOT
from task.runtime import checkpoint
from tests.processes import wait_for

pytestmark = pytest.mark.slow

SITES, ROUNDS, LIMIT = 3, 2, 200
OVERRIDES = ["logger=none", "model=small_cnn", "train.batch_size=32", "metrics.n_bootstrap=50"]
# The fault runs aggregate in the clear: each secure-aggregation stage costs one more
# ClientApp process per site, and the protocol's own dropout handling is tested in
# tests/strategies/test_secure.py; the TLS run above is the secure one across processes.
# The sites' policy must allow it (the default policy refuses secure=none).
PLAIN = ("secure=none",)
#: Flower 1.41's bound on waiting for a node that stopped sending heartbeats (seconds).
HEARTBEAT_BOUND = 60
LAB_POLICY = "require_secure: false\n"


def _checkpointed_round(run_dir: Path) -> int:
    path = run_dir / "last.pt"
    return int(checkpoint.load(path)["round"]) if path.is_file() else 0


def _overrides(fed: SiteFederation, run_dir: Path, *extra: str) -> list[str]:
    dropped = ("run_dir=", "secure.roster=") if "secure=none" in extra else ("run_dir=",)
    kept = [o for o in fed.overrides if not o.startswith(dropped)]
    return [*kept, f"run_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One run of ``scripts.deploy_local`` (its own SuperLink and nodes)."""
    workdir = tmp_path_factory.mktemp("reference") / "deploy"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.deploy_local",
            "--sites",
            str(SITES),
            "--rounds",
            "1",  # one secure round across real processes (each stage spawns ClientApps)
            "--limit-per-site",
            str(LIMIT),
            "--workdir",
            str(workdir),
            "--timeout",
            "900",
            *OVERRIDES,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    return workdir, proc


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[tuple[LocalDeployment, SiteFederation]]:
    """A second deployment with the same sites and settings, for the fault tests."""
    workdir = tmp_path_factory.mktemp("faults")
    policy = workdir / "lab-policy.yaml"
    policy.write_text(LAB_POLICY)
    fed = prepare_sites(workdir, SITES, ROUNDS, OVERRIDES, limit_per_site=LIMIT, site_policy=policy)
    with LocalDeployment(fed.workdir) as dep:
        dep.start_superlink()
        start_sites(dep, fed)
        wait_for(lambda: dep.connected_nodes() == SITES, 120, "three SuperNodes online")
        yield dep, fed


def test_three_sites_one_secure_round_over_tls(secure_run) -> None:
    workdir, proc = secure_run
    logs = workdir / "logs"
    assert proc.returncode == 0, (proc.stderr[-3000:], sorted(p.name for p in logs.iterdir()))
    summary = json.loads((workdir / "deployment.json").read_text())
    assert summary["rounds"] == 1 and summary["sites"] == 3
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


def test_the_superlink_speaks_tls_under_the_deployments_ca(federation, tmp_path) -> None:
    """TLS proven by a handshake, not by the absence of a warning: the SuperLink's port
    completes TLS with a certificate that chains to the deployment's CA, and (the control)
    a client trusting another CA refuses it."""
    dep, _ = federation

    def handshake(ca: Path) -> str:
        context = ssl.create_default_context(cafile=str(ca))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", dep.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return str(tls.version())

    assert handshake(dep.tls.ca_cert) in ("TLSv1.2", "TLSv1.3")
    other = make_tls(tmp_path / "other-ca", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(other.ca_cert)


def test_a_supernode_killed_mid_round_leaves_the_round_to_the_others(federation) -> None:
    """Fault: site-2's machine dies while it trains. The SuperLink reports the node lost
    (no heartbeat), the round is aggregated from the two survivors (in the clear here: the
    protocol's own dropout handling is tested in tests/strategies/test_secure.py), and the
    restarted SuperNode rejoins under its registered key."""
    dep, fed = federation
    run_dir = fed.workdir / "dropout"
    # one round (the time of CI), sampling whoever is online (at least 2) rather than
    # waiting for all three
    extra = ("federation.num_rounds=1", "federation.min_available_sites=2", *PLAIN)
    app = dep.start_app(_overrides(fed, run_dir, *extra), "dropout")
    wait_for(
        lambda: "Receiving: train message" in dep.log_tail("site-2", 400), 300, "train message"
    )
    dep.kill("site-2")
    killed = time.monotonic()
    # The round waits on the dead node no longer than Flower's heartbeat bound (2 x its
    # 30 s interval), with its warm executor gone too; slack for a loaded CI machine.
    wait_for(
        lambda: "failed to report a heartbeat" in dep.log_tail("dropout", 400),
        HEARTBEAT_BOUND + 30,
        "the lost node reported",
    )
    assert time.monotonic() - killed <= HEARTBEAT_BOUND + 30
    assert app.wait(timeout=600) == 0, dep.log_tail("dropout", 60)
    (only,) = json.loads((run_dir / "history.json").read_text())
    assert set(only["sites"]) == {"site-0", "site-1"}  # FedAvg of the two survivors
    assert only["failures"]["train"] == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["auc"] > 0.5  # the federation ended with its test evaluation
    # the site's machine comes back: its SuperNode rejoins under its registered key
    dep.start_supernode("site-2", fed.nodes["site-2"], fed.keys["site-2"])
    wait_for(lambda: dep.connected_nodes() == SITES, 120, "site-2 back online")


def test_a_killed_superlink_and_serverapp_resume_from_the_last_checkpoint(federation) -> None:
    """Fault: the coordinator crashes (SuperLink and ServerApp SIGKILLed) during round 2.
    Restarted on its database, with the SuperNodes reconnecting by themselves, the run is
    resumed from ``last.pt`` and finishes, round 1 untouched. That a resumed run ends with
    exactly the weights of an uninterrupted one is proven on the same server code in
    ``tests/scripts/test_train.py`` (a deployed uninterrupted reference cost 76 s of CI)."""
    dep, fed = federation
    run_dir = fed.workdir / "crash"
    app = dep.start_app(_overrides(fed, run_dir, *PLAIN), "crash")
    wait_for(lambda: _checkpointed_round(run_dir) >= 1, 400, "round 1 checkpoint")
    dep.kill("superlink")
    assert app.wait(timeout=120) != 0  # the submitting CLI sees the link go
    assert _checkpointed_round(run_dir) == 1  # the crash left round 1's checkpoint whole
    round_1 = checkpoint.load(run_dir / "last.pt")
    dep.start_superlink()
    wait_for(lambda: dep.connected_nodes() == SITES, 180, "SuperNodes reconnected")
    resumed = dep.start_app(
        _overrides(fed, run_dir, f"resume={run_dir / 'last.pt'}", *PLAIN), "resume"
    )
    assert resumed.wait(timeout=600) == 0, dep.log_tail("resume", 60)
    final = checkpoint.load(run_dir / "last.pt")
    assert final["round"] == ROUNDS
    assert final["arrays"].keys() == round_1["arrays"].keys()
    assert any(not torch.equal(final["arrays"][k], v) for k, v in round_1["arrays"].items())
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2]
    # round 1 kept as the crashed run recorded it; round 2 trained by all three sites
    before = round_1["history"][0]["evaluate"]
    assert {k: history[0]["evaluate"][k] for k in ("mcc", "num-examples")} == {
        k: before[k] for k in ("mcc", "num-examples")
    }
    assert set(history[1]["sites"]) == {"site-0", "site-1", "site-2"}


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
        wait_for(lambda: dep.connected_nodes() >= 1, 60, "the registered SuperNode")
        assert dep.connected_nodes() == 1
        assert intruder.wait(timeout=60) != 0  # the SuperNode gives up: it cannot activate
        assert "Failed to activate SuperNode" in dep.log_tail("intruder", 200)
        assert "No SuperNode found with the given public key" in dep.log_tail("superlink", 400)
        assert dep.connected_nodes() == 1


def test_a_supernode_whose_executor_dies_is_stopped_so_the_site_shows_offline(
    tmp_path: Path, capsys
) -> None:
    """Fault: a site's warm executor dies (SIGKILL). Its SuperNode, online and connected,
    would otherwise stay so with nobody to run its messages, and every secure round would
    wait out its stage timeout for the site; it is stopped within a bound, as the
    hospital's command stops it (tests/scripts/test_hospital.py)."""
    with LocalDeployment(tmp_path, insecure=True) as dep:
        dep.start_superlink()
        node = dep.start_supernode("site", {"site-name": "site", "data-path": str(tmp_path)}, None)
        wait_for(lambda: dep.connected_nodes() == 1, 120, "the SuperNode online")
        os.kill(dep.procs["site.executor"].pid, signal.SIGKILL)
        node.wait(timeout=30)  # without the watcher: TimeoutExpired, the node runs on
        assert "stopping the SuperNode beside it" in capsys.readouterr().err
        # Stopped, it signs off: offline well within Flower's heartbeat bound.
        wait_for(lambda: dep.connected_nodes() == 0, HEARTBEAT_BOUND / 2, "the site offline")


def test_deployment_without_its_tls_files_refuses_to_start(tmp_path: Path, capsys) -> None:
    from scripts.deploy_local import main

    workdir = tmp_path / "deploy"
    assert main(["--tls-dir", str(tmp_path / "pki"), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert f"TLS files missing: {tmp_path / 'pki' / 'ca.pem'}" in err
    assert "refusing to start without TLS" in err and "--insecure" in err
    assert not workdir.exists()  # nothing written, nothing started
    (tmp_path / "pki").mkdir()
    for name in ("ca.pem", "superlink.pem"):
        (tmp_path / "pki" / name).write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(DeploymentError, match=r"superlink\.key; refusing to start without TLS"):
        LocalDeployment(tmp_path / "dep", tls_dir=tmp_path / "pki")


def _started(pid: int) -> str | None:
    """A process's start time (field 22 of /proc/<pid>/stat), None if it is gone or a
    zombie: with the pid it names one process, even if the pid is reused."""
    fields = stat_fields(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def _mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace") and _started(
                int(cmdline.parent.name)
            ):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_launcher_stops_everything_it_started(tmp_path: Path, sig) -> None:
    workdir = tmp_path / "deploy"
    args = ["--sites", str(SITES), "--rounds", "20", "--limit-per-site", str(LIMIT)]
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scripts.deploy_local",
            *args,
            "--workdir",
            str(workdir),
            *OVERRIDES,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen: dict[int, str] = {}
    try:
        # Until a site has answered a message: SuperLink, SuperNodes, executors, `flwr
        # run`, the ServerApp and ClientApps have all been started by then.
        deadline = time.monotonic() + 600
        while not list(workdir.glob("state/*/site-log.jsonl")):
            if time.monotonic() > deadline or launcher.poll() is not None:
                pytest.fail(f"the deployment never got under way (exit {launcher.poll()})")
            for pid in descendants(launcher.pid):
                seen.setdefault(pid, _started(pid))
            time.sleep(0.2)
        for pid in descendants(launcher.pid):
            seen.setdefault(pid, _started(pid))
        launcher.send_signal(sig)
        assert launcher.wait(timeout=90) == 128 + sig
        assert len(seen) >= 1 + 2 * SITES  # the SuperLink, the SuperNodes, their executors
        wait_for(
            lambda: not [p for p, t in seen.items() if t and _started(p) == t], 30, "stopped tree"
        )
        assert _mentioning(str(workdir)) == []
    finally:  # whatever the test found, it leaves nothing running
        launcher.kill()
        alive = [p for p, t in seen.items() if t and _started(p) == t]  # not a reused pid
        for pid in [*alive, *_mentioning(str(workdir))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
