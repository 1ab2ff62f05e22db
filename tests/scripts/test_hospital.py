"""The hospital's commands: its SuperNode key and the SuperNode's argv and node config."""

from __future__ import annotations

import os
import shlex
import stat
import sys
import time
from pathlib import Path

import pytest

from client import node
from client.node import node_config, supernode_command
from scripts import fingerprint, hospital
from server.pki import make_node_key, make_tls
from server.processes import process_table


def _lines(out: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines()}


def test_key_prints_the_fingerprint_scripts_fingerprint_prints(tmp_path, capsys):
    assert hospital.main(["key", "--out", str(tmp_path), "--name", "hospital-a"]) == 0
    printed = _lines(capsys.readouterr().out)["fingerprint (read it out to the coordinator)"]
    assert fingerprint.main([str(tmp_path / "hospital-a.pub")]) == 0
    assert capsys.readouterr().out.split("\t")[1].strip() == printed
    assert stat.S_IMODE((tmp_path / "hospital-a").stat().st_mode) == 0o600


def test_key_refuses_to_replace_a_key_unless_forced(tmp_path, capsys):
    args = ["key", "--out", str(tmp_path), "--name", "hospital-a"]
    assert hospital.main(args) == 0
    public = (tmp_path / "hospital-a.pub").read_bytes()
    capsys.readouterr()
    assert hospital.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "hospital-a") in err
    assert (tmp_path / "hospital-a.pub").read_bytes() == public
    assert hospital.main([*args, "--force"]) == 0
    assert (tmp_path / "hospital-a.pub").read_bytes() != public


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a b", ""])
def test_key_refuses_a_site_name_that_is_no_file_name(tmp_path, capsys, name):
    assert hospital.main(["key", "--out", str(tmp_path), "--name", name]) == 2
    assert repr(name) in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_node_config_keys_are_the_ones_the_client_app_reads():
    from client.policy import POLICY_KEY
    from client.secure import IDENTITY_KEY, ROSTER
    from task.data.sites import DATA_PATH, SITE_NAME, STATE_DIR
    from task.federation.node import DEVICE

    assert (node.SITE_NAME, node.DATA_PATH, node.STATE_DIR) == (SITE_NAME, DATA_PATH, STATE_DIR)
    assert node.DEVICE == DEVICE
    assert (node.POLICY_KEY, node.IDENTITY_KEY, node.ROSTER) == (POLICY_KEY, IDENTITY_KEY, ROSTER)


def test_supernode_command_has_the_flags_of_a_local_deployment(tmp_path):
    config = node_config(
        data_path=tmp_path / "data",
        state_dir=Path("state"),
        site_name="hospital-a",
        site_policy=tmp_path / "policy.yaml",
    )
    argv = supernode_command(
        superlink="superlink.example.org:9092",
        ca_cert=tmp_path / "ca.pem",
        private_key=tmp_path / "hospital-a",
        config=config,
        runtime_port=9999,
    )
    assert argv[1:3] == ["-m", "client.supernode"]  # Flower's SuperNode, paced polls
    flags = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert flags["--superlink"] == "superlink.example.org:9092"
    assert flags["--root-certificates"] == str(tmp_path / "ca.pem")
    assert flags["--auth-supernode-private-key"] == str(tmp_path / "hospital-a")
    assert flags["--port"] == "9999" and "--insecure" not in argv
    pairs = dict(pair.split("=", 1) for pair in shlex.split(flags["--node-config"]))
    assert pairs == {
        "data-path": str(tmp_path / "data"),
        "state-dir": str(Path("state").resolve()),  # the ClientApp runs elsewhere
        "site-name": "hospital-a",
        "site-policy": str(tmp_path / "policy.yaml"),
    }


def test_node_config_reaches_flower_intact_with_spaces_and_unicode():
    from flwr.common.config import parse_config_args

    config = {"data-path": "/data/my cxr/Zürich\\raw", "site-name": "a b", "state-dir": "x.toml"}
    assert parse_config_args([node.node_config_arg(config)]) == config


def test_node_config_refuses_a_value_flower_would_cut_at_a_quote():
    with pytest.raises(ValueError, match="data-path"):
        node.node_config_arg({"data-path": '/data/"cxr"'})


@pytest.fixture
def site(tmp_path):
    tls = make_tls(tmp_path / "pki", ["localhost"])
    private, _ = make_node_key(tmp_path / "keys", "hospital-a")
    (tmp_path / "data").mkdir()
    return tls, private, tmp_path


def _supernode_args(tls, private, tmp_path, **changes):
    args = {
        "--superlink": "localhost:9092",
        "--ca": str(tls.ca_cert),
        "--key": str(private),
        "--data": str(tmp_path / "data"),
        "--state": str(tmp_path / "state"),
    } | changes
    return ["supernode", *(item for pair in args.items() for item in pair)]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"--superlink": "localhost"}, "'localhost'"),
        ({"--ca": "missing.pem"}, "missing.pem"),
        ({"--key": "KEYPUB"}, "hospital-a.pub"),
        ({"--data": "nowhere"}, "nowhere"),
        ({"--site-policy": "nopolicy.yaml"}, "nopolicy.yaml"),
        ({"--device": "gpu"}, "node config device='gpu'"),
    ],
)
def test_supernode_refuses_bad_input_naming_it(site, capsys, monkeypatch, change, named):
    tls, private, tmp_path = site
    if change.get("--key") == "KEYPUB":
        change = {"--key": str(private.with_suffix(".pub"))}
    started = []
    monkeypatch.setattr(hospital, "run_foreground", lambda *a: started.append(a) or 0)
    assert hospital.main(_supernode_args(tls, private, tmp_path, **change)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and not started


def test_supernode_starts_flower_with_the_site_config(site, capsys, monkeypatch):
    tls, private, tmp_path = site
    started = []

    def run_foreground(argv, env, companion=None):
        started.append((argv, env, companion))
        return 0

    monkeypatch.setattr(hospital, "run_foreground", run_foreground)
    monkeypatch.setattr(hospital, "supernode_command", lambda **kw: started.append(kw) or [])
    changes = {"--name": "hospital-a", "--poll-interval": "0.5", "--device": "cuda:1"}
    assert hospital.main(_supernode_args(tls, private, tmp_path, **changes)) == 0
    kwargs, (argv, env, companion) = started
    assert kwargs["config"]["site-name"] == "hospital-a"
    assert kwargs["config"]["device"] == "cuda:1"  # checked where the site computes
    assert kwargs["poll_interval"] == 0.5
    assert kwargs["private_key"] == private.resolve()
    assert (tmp_path / "state").is_dir()
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    # By default the warm executor launches its ClientApps, authenticated by a fresh
    # secret only this user can read, and started with the SuperNode's pid.
    secret = tmp_path / "state" / "superexec.secret"
    assert argv[-4:] == ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]
    assert len(secret.read_bytes()) == 32 and secret.stat().st_mode & 0o777 == 0o600
    executor = companion(4242)
    assert executor[1:3] == ["-m", "client.executor"]
    assert executor[-2:] == ["--parent-pid", "4242"] and "127.0.0.1:9094" in executor


def test_a_poll_interval_out_of_range_is_refused_naming_it(site, capsys):
    tls, private, tmp_path = site
    with pytest.raises(SystemExit) as stop:
        hospital.main(_supernode_args(tls, private, tmp_path, **{"--poll-interval": "0"}))
    assert stop.value.code == 2 and "--poll-interval 0" in capsys.readouterr().err


def test_the_poll_interval_reaches_the_supernode(tmp_path):
    argv = supernode_command(
        superlink="superlink.example.org:9092",
        ca_cert=tmp_path / "ca.pem",
        private_key=tmp_path / "hospital-a",
        config={},
        poll_interval=0.5,
    )
    assert argv[argv.index("--poll-interval") + 1] == "0.5"


def test_a_cold_supernode_runs_without_the_executor(site, monkeypatch):
    tls, private, tmp_path = site
    started = []
    monkeypatch.setattr(
        hospital, "run_foreground", lambda argv, env, companion=None: started.append(companion)
    )
    args = [*_supernode_args(tls, private, tmp_path), "--cold"]
    hospital.main(args)
    assert started == [None]


def _group_members(pgid: int) -> list[int]:
    """Live processes in the process group ``pgid`` (Linux /proc)."""
    return [
        pid
        for pid, fields in process_table().items()
        if int(fields[2]) == pgid and fields[0] != "Z"
    ]


def test_the_companion_runs_in_the_supernodes_group_and_stops_with_it() -> None:
    from scripts._cli import run_foreground

    groups = []

    def companion(pid: int) -> list[str]:
        groups.append(pid)
        return [sys.executable, "-c", "import time; time.sleep(600)"]

    # The "SuperNode" waits a second, then exits 7 if the companion shares its group.
    supernode = (
        "import os, time\n"
        "from tests.scripts.test_hospital import _group_members\n"
        "time.sleep(1)\n"
        "raise SystemExit(7 if len(_group_members(os.getpgid(0))) == 2 else 8)\n"
    )
    code = run_foreground([sys.executable, "-c", supernode], companion=companion)
    assert code == 7
    deadline = time.monotonic() + 10
    while _group_members(groups[0]):  # the companion was stopped with it
        assert time.monotonic() < deadline, _group_members(groups[0])
        time.sleep(0.1)


def test_a_supernode_whose_executor_dies_is_stopped_so_the_site_shows_offline(capsys):
    from scripts._cli import COMPANION_EXITED, run_foreground

    groups = []

    def companion(pid: int) -> list[str]:
        groups.append(pid)
        return [sys.executable, "-c", "raise SystemExit(5)"]  # the executor fails at start

    t0 = time.monotonic()
    code = run_foreground(
        [sys.executable, "-c", "import time; time.sleep(600)"], companion=companion
    )
    assert code == COMPANION_EXITED and time.monotonic() - t0 < 30
    assert "exited with code 5" in capsys.readouterr().err
    assert not _group_members(groups[0])  # the "SuperNode" did not outlive it


def test_a_signal_stops_both_without_reporting_the_companion_as_failed(capsys):
    """Ctrl-C or SIGTERM to the hospital's command stops the SuperNode and its executor
    together; an executor that ends first is then no fault (no error, no exit code 3)."""
    import signal
    import threading

    from scripts._cli import run_foreground

    # The "SuperNode" takes 1.5 s to shut down; the "executor" ends at once.
    supernode = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1.5), sys.exit(0)))\n"
        "time.sleep(600)\n"
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    code = run_foreground(
        [sys.executable, "-c", supernode],
        companion=lambda pid: [sys.executable, "-c", "import time; time.sleep(600)"],
    )
    timer.join()
    assert code == 0
    assert "exited with code" not in capsys.readouterr().err
