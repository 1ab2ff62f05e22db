"""The deployment's PKI: a CA-signed server certificate and SuperNode keys Flower accepts."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from server.pki import certificate_fingerprint, make_node_key, make_tls


def test_server_certificate_is_signed_by_ca_for_loopback(tmp_path: Path) -> None:
    files = make_tls(tmp_path, ["127.0.0.1", "localhost"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (files.server_key, tmp_path / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_node_key_is_p384_openssh_and_private_part_is_private(tmp_path: Path) -> None:
    private, public = make_node_key(tmp_path, "site-0")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()) == key.public_key()
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_server_certificate_names_the_given_hosts_and_ips(tmp_path: Path) -> None:
    files = make_tls(tmp_path, ["superlink.example.org"], ["192.0.2.7", "2001:db8::7"])
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::7"),
    ]


@pytest.mark.parametrize(
    ("hosts", "ips", "named"),
    [
        (["bad host"], [], "'bad host'"),
        (["a..b"], [], "'a..b'"),
        ([], ["localhost"], "'localhost'"),
        ([], [], "at least one"),
    ],
)
def test_a_bad_host_or_ip_is_refused_by_name(tmp_path: Path, hosts, ips, named) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        make_tls(tmp_path / "pki", hosts, ips)
    assert not (tmp_path / "pki").exists()


def test_an_existing_ca_is_kept_unless_overwrite(tmp_path: Path) -> None:
    first = make_tls(tmp_path, ["localhost"]).ca_cert.read_bytes()
    with pytest.raises(FileExistsError, match=r"ca\.pem"):
        make_tls(tmp_path, ["localhost"], overwrite=False)
    assert (tmp_path / "ca.pem").read_bytes() == first
    make_tls(tmp_path, ["localhost"])  # the default, as a local deployment uses it
    assert (tmp_path / "ca.pem").read_bytes() != first


def test_an_existing_node_key_is_kept_unless_overwrite(tmp_path: Path) -> None:
    private, _ = make_node_key(tmp_path, "site-0")
    before = private.read_bytes()
    with pytest.raises(FileExistsError, match="site-0"):
        make_node_key(tmp_path, "site-0", overwrite=False)
    assert private.read_bytes() == before


def test_a_rewritten_private_key_is_private_again(tmp_path: Path) -> None:
    make_tls(tmp_path, ["localhost"])
    (tmp_path / "superlink.key").chmod(0o644)
    files = make_tls(tmp_path, ["localhost"])
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600


def test_certificate_fingerprint_is_sha256_of_the_der(tmp_path: Path) -> None:
    files = make_tls(tmp_path, ["localhost"])
    der = x509.load_pem_x509_certificate(files.ca_cert.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    assert certificate_fingerprint(files.ca_cert) == hashlib.sha256(der).digest().hex(":").upper()
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(ValueError, match=r"bad\.pem"):
        certificate_fingerprint(tmp_path / "bad.pem")
