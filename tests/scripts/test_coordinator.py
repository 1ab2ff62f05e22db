"""The coordinator's commands: its CA, SuperNode registration and the SuperLink's argv."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from mpc.parties import free_port
from scripts import coordinator, fingerprint
from server.coordinator import superlink_command
from server.pki import make_node_key, make_tls
from server.processes import descendants
from task.constants import REPO_ROOT


def _pki(out: Path, *extra: str) -> int:
    return coordinator.main(["pki", "--out", str(out), *extra])


def test_pki_certifies_the_given_host_names_and_ips(tmp_path):
    hosts = ["--host", "superlink.example.org", "--host", "localhost", "--ip", "10.1.2.3"]
    assert _pki(tmp_path, *hosts, "--ip", "2001:db8::1") == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "superlink.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    ips = san.get_values_for_type(x509.IPAddress)
    assert ips == [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("2001:db8::1")]
    for key in ("ca.key", "superlink.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600


def test_pki_refuses_to_replace_a_ca_unless_forced(tmp_path, capsys):
    assert _pki(tmp_path, "--host", "a.example.org") == 0
    ca = (tmp_path / "ca.pem").read_bytes()
    capsys.readouterr()
    assert _pki(tmp_path, "--host", "a.example.org") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "ca.pem") in err
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert _pki(tmp_path, "--host", "a.example.org", "--force") == 0
    assert (tmp_path / "ca.pem").read_bytes() != ca


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--host", "bad host"], "'bad host'"),
        (["--host=-x.example.org"], "'-x.example.org'"),
        (["--ip", "300.1.2.3"], "'300.1.2.3'"),
        ([], "--host"),
    ],
)
def test_pki_refuses_a_bad_name_by_name_and_writes_nothing(tmp_path, capsys, args, named):
    assert _pki(tmp_path / "pki", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err
    assert not (tmp_path / "pki").exists()


@pytest.fixture
def node_pub(tmp_path) -> Path:
    return make_node_key(tmp_path / "keys", "hospital-a")[1]


@pytest.mark.parametrize("content", [None, "garbage\n", "ssh-ed25519 AAAA\n"])
def test_register_refuses_a_missing_or_garbled_key_by_name(tmp_path, capsys, content):
    key = tmp_path / "hospital.pub"
    if content is not None:
        key.write_text(content)
    ca = make_tls(tmp_path / "pki", ["localhost"]).ca_cert
    args = ["register", "--key", str(key), "--superlink", "localhost:9092", "--ca", str(ca)]
    assert coordinator.main([*args, "--yes"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(key) in err


def test_register_shows_the_fingerprint_and_stops_if_not_confirmed(
    tmp_path, node_pub, capsys, monkeypatch
):
    ca = make_tls(tmp_path / "pki", ["localhost"]).ca_cert
    calls = []
    monkeypatch.setattr(coordinator.subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    args = ["register", "--key", str(node_pub), "--superlink", "localhost:9092", "--ca", str(ca)]
    assert coordinator.main(args) == 1
    shown = capsys.readouterr().out
    fingerprint.main([str(node_pub)])
    assert capsys.readouterr().out.split("\t")[1].strip() in shown
    assert not calls


def test_register_calls_flwr_with_a_tls_connection_to_the_superlink(
    tmp_path, node_pub, monkeypatch
):
    ca = make_tls(tmp_path / "pki", ["localhost"]).ca_cert
    seen = {}

    def fake_run(argv, env, **_):
        seen["argv"] = argv
        seen["config"] = tomllib.loads((Path(env["FLWR_HOME"]) / "config.toml").read_text())
        return subprocess.CompletedProcess(argv, 0, "registered\n", "")

    monkeypatch.setattr(coordinator.subprocess, "run", fake_run)
    args = ["register", "--key", str(node_pub), "--superlink", "sl.example.org:9092"]
    assert coordinator.main([*args, "--ca", str(ca), "--name", "hospital-a", "--yes"]) == 0
    assert seen["argv"][0].endswith("flwr")
    assert seen["argv"][1:] == [
        *("supernode", "register", str(node_pub), "primia", "--name", "hospital-a")
    ]
    connection = seen["config"]["superlink"]["primia"]
    assert connection == {"address": "sl.example.org:9092", "root-certificates": str(ca)}
    assert seen["config"]["superlink"]["default"] == "primia"


def test_superlink_command_has_the_flags_of_a_local_deployment(tmp_path):
    tls = make_tls(tmp_path, ["localhost"])
    argv = superlink_command(host="0.0.0.0", port=9092, tls=tls, database=tmp_path / "sl.db")
    assert argv[0].endswith("flower-superlink")
    flags = dict(itertools.pairwise(argv))
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "9092"
    assert flags["--ssl-ca-certfile"] == str(tls.ca_cert)
    assert flags["--ssl-certfile"] == str(tls.server_cert)
    assert flags["--ssl-keyfile"] == str(tls.server_key)
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation"} <= set(argv)
    assert "--insecure" not in argv


@pytest.mark.parametrize("address", ["localhost", "localhost:0", "localhost:99999", "::1:80"])
def test_superlink_refuses_a_bad_address_by_name(tmp_path, capsys, address):
    make_tls(tmp_path, ["localhost"])
    assert coordinator.main(["superlink", "--tls", str(tmp_path), "--address", address]) == 2
    assert repr(address) in capsys.readouterr().err


def _handshake(port: int, ca: Path, hostname: str = "localhost") -> None:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=hostname),
    ):
        pass


@pytest.mark.slow
def test_a_started_superlink_serves_tls_for_its_host_and_stops_on_sigterm(tmp_path, node_pub):
    py = [sys.executable, "-m", "scripts.coordinator"]
    subprocess.run([*py, "pki", "--out", str(tmp_path / "pki"), "--host", "localhost"], check=True)
    forged = make_tls(tmp_path / "forged", ["localhost"]).ca_cert
    port = free_port()
    log = (tmp_path / "superlink.log").open("w")
    args = ["superlink", "--tls", str(tmp_path / "pki"), "--address", f"127.0.0.1:{port}"]
    args += ["--database", str(tmp_path / "superlink.db")]
    proc = subprocess.Popen([*py, *args], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _handshake(port, tmp_path / "pki" / "ca.pem")
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, (tmp_path / "superlink.log").read_text()
                assert time.monotonic() < deadline, "SuperLink did not listen in 120 s"
                time.sleep(0.5)
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, forged)  # a certificate from another CA is refused
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(port, tmp_path / "pki" / "ca.pem", "other.example.org")
        register = ["register", "--key", str(node_pub), "--yes", "--name", "hospital-a"]
        register += ["--superlink", f"localhost:{port}", "--ca", str(tmp_path / "pki/ca.pem")]
        res = subprocess.run([*py, *register], cwd=REPO_ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        children = descendants(proc.pid)
        assert children  # flower-superlink runs below the command
        proc.send_signal(signal.SIGTERM)
        # Flower's SuperLink shuts down and then ends by the signal: 143, as a shell reports.
        assert proc.wait(timeout=60) in (0, 128 + signal.SIGTERM)
        assert "shutdown complete" in (tmp_path / "superlink.log").read_text()
        time.sleep(1)
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    finally:
        if proc.poll() is None:  # the test failed: leave nothing running
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
        log.close()
