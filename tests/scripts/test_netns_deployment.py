"""A deployment in which no address is loopback: the coordinator and three hospitals each
in a Linux network namespace of their own, joined only by veth links to a bridge.

It runs the organisations' own commands (``scripts.coordinator pki/superlink/register``,
``scripts.hospital key/supernode``) and ``flwr run`` as a coordinator would, and proves
that a secure round completes when SuperLink and SuperNodes meet only at 10.231.0.x: the
SuperLink listens on 10.231.0.1 alone, its certificate names that IP, and every SuperNode
dials it from a namespace whose sole route there is its veth. Each namespace's own
127.0.0.1 carries only host-local traffic (a SuperNode and its warm executor).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.deploy_local import SiteFederation, prepare_sites
from server.coordinator import CONNECTION, connection_toml
from server.pki import make_tls
from task.constants import DATA_ENV_VAR, METRICS_FILE, REPO_ROOT
from tests.processes import wait_for

pytestmark = pytest.mark.slow

SITES, LIMIT, PORT = 3, 200, 9092
COORDINATOR = "10.231.0.1"
SITE_IPS = [f"10.231.0.{11 + i}" for i in range(SITES)]
SUPERLINK = f"{COORDINATOR}:{PORT}"
OVERRIDES = ["logger=none", "model=small_cnn", "train.batch_size=32", "metrics.n_bootstrap=50"]
PYTHON = sys.executable


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Network:
    """The coordinator's and the sites' namespaces, and the processes started in them."""

    coordinator: str
    sites: list[str]
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, ns: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``argv`` in namespace ``ns``, to completion; output captured, exit not checked."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, ns: str, log: Path, *argv: str) -> subprocess.Popen:
        """``argv`` in namespace ``ns``, in the background, its output in ``log``."""
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc


def _kill_everything_in(ns: str) -> None:
    """SIGKILL every process in ``ns`` until none is left (a dying one may have forked)."""
    for _ in range(100):
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        pids = [int(p) for p in res.stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise RuntimeError(f"processes in namespace {ns} survive SIGKILL")


def _make_namespaces(coordinator: str, sites: list[str]) -> None:
    """A bridge in the coordinator's namespace at 10.231.0.1/24, and one veth per site from
    it to the site's namespace (10.231.0.11.../24); ``lo`` up everywhere."""
    for ns in (coordinator, *sites):
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", coordinator, "link", "add", "br0", "type", "bridge")
    _ip("-n", coordinator, "addr", "add", f"{COORDINATOR}/24", "dev", "br0")
    _ip("-n", coordinator, "link", "set", "br0", "up")
    for i, (ns, addr) in enumerate(zip(sites, SITE_IPS, strict=True)):
        port = f"site{i}"
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", port, "netns", coordinator)
        _ip("-n", coordinator, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    """Fresh namespaces (names carry this pid); on teardown every process in them is
    killed and they are deleted, the veth links with them, whatever the test did."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make network namespaces")
    tag = os.getpid()
    coordinator, sites = f"primia-c{tag}", [f"primia-s{tag}-{i}" for i in range(SITES)]
    home = tmp_path / "coordinator" / "flwr-home"
    env = {
        **os.environ,
        "PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        "WANDB_MODE": "offline",
    }
    net = Network(coordinator, sites, env)
    try:
        _make_namespaces(coordinator, sites)
    except subprocess.CalledProcessError as err:
        _remove(net)
        pytest.skip(f"cannot make network namespaces: {err.stderr.strip() or err}")
    try:
        yield net
    finally:
        _remove(net)


def _remove(net: Network) -> None:
    existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in (*net.sites, net.coordinator):  # the SuperNodes first
        if ns in existing.split():
            _kill_everything_in(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    for proc in net.procs:
        proc.kill()
        proc.wait(timeout=30)


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"{shlex.join(res.args)}:\n{res.stdout}{res.stderr}"
    return res.stdout


def _start_coordinator(net: Network, workdir: Path) -> Path:
    """``pki`` for 10.231.0.1, the SuperLink bound to it, and a Flower home naming it.
    Returns the CA certificate."""
    pki = workdir / "pki"
    _ok(net.run(net.coordinator, PYTHON, "-m", "scripts.coordinator", "pki", "--out", str(pki),
                "--ip", COORDINATOR))  # fmt: skip
    ca = pki / "ca.pem"
    home = Path(net.env["FLWR_HOME"])
    home.mkdir(parents=True)
    (home / "config.toml").write_text(connection_toml(SUPERLINK, ca))
    log = workdir / "superlink.log"
    # The ServerApp runs from the installed FAB, not this checkout: the path prepare_sites set
    net.env[DATA_ENV_VAR] = os.environ[DATA_ENV_VAR]
    # One HTTP port serves the Fleet, Control and Runtime APIs (server/coordinator.py):
    # bound to 10.231.0.1 only, it is the port the sites dial.
    link = net.spawn(net.coordinator, log, PYTHON, "-m", "scripts.coordinator", "superlink",
                     "--tls", str(pki), "--address", SUPERLINK,
                     "--database", str(workdir / "superlink.db"))  # fmt: skip
    wait_for(
        lambda: link.poll() is not None or "Application startup complete" in log.read_text(),
        90,
        "SuperLink",
    )
    assert link.poll() is None, log.read_text()
    return ca


def _key(fed: SiteFederation, name: str) -> Path:
    return fed.workdir / "keys" / name / name


def _supernode(net: Network, i: int, fed: SiteFederation, ca: Path, *extra: str) -> Path:
    """Site ``i``'s SuperNode in its namespace, trusting ``ca``; returns its log."""
    name, node = f"site-{i}", fed.nodes[f"site-{i}"]
    log = fed.workdir / f"{name}.{len(net.procs)}.log"
    net.spawn(net.sites[i], log, PYTHON, "-m", "scripts.hospital", "supernode",
              "--superlink", SUPERLINK, "--ca", str(ca), "--key", str(_key(fed, name)),
              "--data", node["data-path"], "--name", name,
              "--identity-key", node["identity-key"], "--roster", node["roster"],
              "--state", node["state-dir"], *extra)  # fmt: skip
    return log


def _start_site(net: Network, i: int, fed: SiteFederation, ca: Path) -> Path:
    """In site ``i``'s namespace: its key, registered by the coordinator, and its SuperNode."""
    name = f"site-{i}"
    keys = _key(fed, name).parent
    _ok(net.run(net.sites[i], PYTHON, "-m", "scripts.hospital", "key", "--out", str(keys),
                "--name", name))  # fmt: skip
    _ok(net.run(net.coordinator, PYTHON, "-m", "scripts.coordinator", "register",
                "--key", str(keys / f"{name}.pub"), "--superlink", SUPERLINK, "--ca", str(ca),
                "--name", name, "--yes"))  # fmt: skip
    return _supernode(net, i, fed, ca)


def _online(net: Network) -> int:
    res = net.run(net.coordinator, "flwr", "supernode", "list", CONNECTION, "--format", "json")
    return res.stdout.count('"online"')


def _fleet_peers(net: Network) -> set[str]:
    """The peer addresses of the TCP connections established to the SuperLink's port."""
    res = net.run(net.coordinator, "ss", "-tnH", "state", "established", f"( sport = :{PORT} )")
    return {line.split()[-1].rsplit(":", 1)[0] for line in _ok(res).splitlines() if line}


def _clients(superlink_log: Path) -> set[str]:
    """Every client address in the SuperLink's access log (``ADDR:PORT - "POST ...``)."""
    lines = [line for line in superlink_log.read_text().splitlines() if "uvicorn.access" in line]
    return {line.split("uvicorn.access] ")[1].rsplit(":", 1)[0] for line in lines}


def _run_app(net: Network, fed: SiteFederation, log: Path) -> tuple[int, set[str]]:
    """``flwr run`` from the coordinator's namespace, sampling who is connected to the
    SuperLink while it runs. Returns its exit code and the peers seen."""
    run_config = f"overrides={json.dumps(shlex.join(fed.overrides))}"  # a TOML string
    app = net.spawn(net.coordinator, log, "flwr", "run", str(REPO_ROOT), CONNECTION,
                    "--run-config", run_config, "--stream")  # fmt: skip
    peers: set[str] = set()
    deadline = time.monotonic() + 900
    while app.poll() is None and time.monotonic() < deadline:
        peers |= _fleet_peers(net)
        time.sleep(0.5)
    return (app.poll() if app.poll() is not None else -1), peers


def test_a_secure_round_across_namespaces_over_veth_only(network: Network, tmp_path: Path) -> None:
    net = network
    fed = prepare_sites(tmp_path / "sites", SITES, 1, OVERRIDES, limit_per_site=LIMIT)
    ca = _start_coordinator(net, tmp_path / "coordinator")
    logs = [_start_site(net, i, fed, ca) for i in range(SITES)]
    # A second SuperNode of site-0, with its registered key but trusting another CA: only
    # TLS can keep it out.
    stranger = make_tls(tmp_path / "other-ca", [COORDINATOR]).ca_cert
    elsewhere = ("--runtime-port", "9095", "--state", str(tmp_path / "misled"))
    misled = _supernode(net, 0, fed, stranger, *elsewhere)
    wait_for(lambda: _online(net) == SITES, 180, "three SuperNodes online")
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in misled.read_text(), 60, "TLS refusal")
    for log in logs:  # each hospital command started its SuperNode and warm executor
        assert "Traceback" not in log.read_text(), log.read_text()[-2000:]

    # A site reaches 10.231.0.1 through its veth only; the coordinator's 127.0.0.1 lies in
    # another namespace, out of every site's reach. So what the SuperNodes dialled
    # (10.231.0.1) crossed the veth links, which the peers seen below confirm.
    for ns, addr in zip(net.sites, SITE_IPS, strict=True):
        route = _ok(net.run(ns, "ip", "route", "get", COORDINATOR))
        assert f"dev eth0 src {addr}" in route, route

    code, peers = _run_app(net, fed, tmp_path / "flwr-run.log")
    assert code == 0, (tmp_path / "flwr-run.log").read_text()[-3000:]
    assert set(SITE_IPS) <= peers, peers
    # the rest are the coordinator's own clients (`flwr`, the ServerApp) on 10.231.0.1
    assert peers <= {COORDINATOR, *SITE_IPS}, peers

    assert "CERTIFICATE_VERIFY_FAILED" in misled.read_text()
    assert _clients(tmp_path / "coordinator" / "superlink.log") == {COORDINATOR, *SITE_IPS}
    metrics = json.loads((fed.run_dir / METRICS_FILE).read_text())
    assert metrics["rounds_run"] == 1
    (only,) = json.loads((fed.run_dir / "history.json").read_text())
    assert set(only["sites"]) == {f"site-{i}" for i in range(SITES)}
    assert only["train"]["secure-sites"] == SITES  # secure aggregation, the default
    for node in fed.nodes.values():
        assert (Path(node["state-dir"]) / "site-log.jsonl").is_file(), node["state-dir"]
