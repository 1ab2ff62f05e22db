"""A consortium's private certificate authority, with `cryptography` (Flower-free).

One CA signs what each party presents: the SuperLink's TLS certificate in a federation
(:mod:`server.pki`), and each encrypted-diagnosis party's certificate, which names its
role (:mod:`mpc.channel.certs`). Keys are NIST P-384; private keys are written mode 600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = dt.timedelta(days=365)
#: A DNS host name: dot-separated labels of letters, digits and inner hyphens (RFC 1123).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def write_private(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def subject_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PriMIA on Flower"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def subject_alt_names(hosts: Sequence[str], ips: Sequence[str] = ()) -> list[x509.GeneralName]:
    """The SANs of a server certificate: ``hosts`` are DNS names (an IP address given as a
    host is taken as one), ``ips`` must be IP addresses. A bad value raises ValueError
    naming it."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if len(host) > 253 or not _HOST_NAME.fullmatch(host):
                raise ValueError(f"host name {host!r} is not a valid DNS name") from None
            sans.append(x509.DNSName(host))
    for ip in ips:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ValueError(f"IP address {ip!r} is not an IPv4 or IPv6 address") from None
    if not sans:
        raise ValueError("a server certificate needs at least one host name or IP address")
    return sans


def ca_certificate(ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    """The federation's self-signed CA: it may sign server certificates, not other CAs."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject_name("PriMIA federation CA"))
        .issuer_name(subject_name("PriMIA federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )


def pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM (its file's mode 600 protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def leaf_certificate(
    public_key: ec.EllipticCurvePublicKey,
    common_name: str,
    sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    """A certificate the CA signs for ``public_key``: valid for ``sans`` only, for the
    extended key ``usages`` only, and unable to sign other certificates."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA384())
    )


def write_ca(
    folder: Path, *, overwrite: bool, name: str = "CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new CA written to ``folder/ca.pem`` and ``folder/ca.key`` (mode 600).

    ``overwrite=False`` refuses (FileExistsError, naming the file) a folder that already
    holds one: a new CA would silently cut off everyone who trusts the old one.
    """
    for path in (folder / "ca.pem", folder / "ca.key"):
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} exists; refusing to replace the {name}")
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = ca_certificate(key, dt.datetime.now(dt.UTC))
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(folder / "ca.key", pkcs8(key))
    return cert, key
