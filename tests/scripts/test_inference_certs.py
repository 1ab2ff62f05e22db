"""The certificate commands, as each organisation runs them."""

from __future__ import annotations

import ssl
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from mpc.channel.certs import ROLE_URI_PREFIX
from task.constants import REPO_ROOT


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.inference_certs", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ca_key_and_sign_give_a_role_certificate_that_tls_accepts(tmp_path: Path) -> None:
    ca, me = tmp_path / "ca", tmp_path / "hospital"
    assert _run("ca", "--out", str(ca)).returncode == 0
    assert _run("key", "--role", "data-owner", "--out", str(me)).returncode == 0
    key = me / "data-owner.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signed = _run(
        *("sign", "--ca", str(ca), "--csr", str(me / "data-owner.csr"), "--role", "data-owner"),
        *("--host", "hospital.example.org", "--out", str(me / "data-owner.pem")),
    )
    assert signed.returncode == 0, signed.stderr
    assert "SHA-256 " in signed.stdout
    cert = x509.load_pem_x509_certificate((me / "data-owner.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        ROLE_URI_PREFIX + "data-owner"
    ]
    assert sans.get_values_for_type(x509.DNSName) == ["hospital.example.org"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # key and certificate belong together
    ctx.load_cert_chain(str(me / "data-owner.pem"), str(key))


def test_a_second_ca_and_a_bad_host_are_refused_in_one_line(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert _run("ca", "--out", str(ca)).returncode == 0
    again = _run("ca", "--out", str(ca))
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"error: {ca / 'ca.pem'} exists; refusing to replace the consortium CA"
    ]
    _run("key", "--role", "dealer", "--out", str(tmp_path / "d"))
    bad = _run(
        *("sign", "--ca", str(ca), "--csr", str(tmp_path / "d" / "dealer.csr")),
        *("--role", "dealer", "--host", "not a host", "--out", str(tmp_path / "d" / "x.pem")),
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: host name 'not a host' is not a valid DNS name"
