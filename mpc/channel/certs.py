"""Certificates of the encrypted-diagnosis parties, each naming its role.

The consortium CA (:mod:`mpc.pki`, the same tooling as the SuperLink's) signs one
certificate per party. Its subject alternative names carry the party's role as a URI,
``urn:primia:party:<role>``, and the host names or addresses the party is reached at.
A peer is accepted only if its certificate chains to the CA *and* names the role the
protocol expects at that end of the connection (:mod:`mpc.channel.tls`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from mpc.pki import (
    leaf_certificate,
    pkcs8,
    subject_alt_names,
    subject_name,
    write_ca,
    write_private,
)

MODEL_OWNER, DATA_OWNER, DEALER = "model-owner", "data-owner", "dealer"
ROLES = (MODEL_OWNER, DATA_OWNER, DEALER)
ROLE_URI_PREFIX = "urn:primia:party:"
#: A party both listens (server) and dials (client) within one session.
_BOTH_ENDS = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


@dataclass(frozen=True)
class PartyCredentials:
    """What one party holds: the consortium CA certificate, its certificate and key."""

    role: str
    ca_cert: Path
    cert: Path
    key: Path

    @classmethod
    def from_folder(cls, folder: str | Path, role: str) -> PartyCredentials:
        """``ca.pem``, ``<role>.pem`` and ``<role>.key`` in ``folder`` (as :func:`issue_party`
        writes them); a missing file is named."""
        folder = Path(folder)
        creds = cls(
            check_role(role), folder / "ca.pem", folder / f"{role}.pem", folder / f"{role}.key"
        )
        creds.check()
        return creds

    def check(self) -> None:
        """Every file present; a missing one is named."""
        missing = [str(p) for p in (self.ca_cert, self.cert, self.key) if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.role} credentials missing: {', '.join(missing)}")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    return role


def make_consortium_ca(folder: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """``ca.pem`` and ``ca.key`` in ``folder``; an existing CA is kept unless
    ``overwrite``, since a new one would cut off every party that trusts the old."""
    write_ca(folder, overwrite=overwrite, name="consortium CA")
    return folder / "ca.pem", folder / "ca.key"


def make_party_key(out: Path, role: str) -> tuple[Path, Path]:
    """A party's private key (``<role>.key``, mode 600, never leaves ``out``) and its
    certificate signing request (``<role>.csr``) for the consortium CA to sign."""
    check_role(role)
    key = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name(f"PriMIA {role}"))
        .sign(key, hashes.SHA384())
    )
    out.mkdir(parents=True, exist_ok=True)
    key_path = write_private(out / f"{role}.key", pkcs8(key))
    csr_path = out / f"{role}.csr"
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return key_path, csr_path


def sign_party(
    ca_folder: Path, csr_path: Path, role: str, hosts: Sequence[str], cert_path: Path
) -> Path:
    """The CA's certificate for the key in ``csr_path``: the role is the CA's to assign
    (whatever the request says), and so are the hosts the party is reached at."""
    check_role(role)
    csr = x509.load_pem_x509_csr(Path(csr_path).read_bytes())
    if not csr.is_signature_valid:
        raise ValueError(f"{csr_path}: the request's signature does not match its key")
    ca_cert = x509.load_pem_x509_certificate((ca_folder / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_folder / "ca.key").read_bytes(), None)
    sans = [x509.UniformResourceIdentifier(ROLE_URI_PREFIX + role), *subject_alt_names(hosts)]
    cert = leaf_certificate(csr.public_key(), f"PriMIA {role}", sans, _BOTH_ENDS, ca_cert, ca_key)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue_party(
    ca_folder: Path, out: Path, role: str, hosts: Sequence[str] = ("127.0.0.1",)
) -> PartyCredentials:
    """Key, request and signed certificate in one step, with the CA certificate beside
    them in ``out`` (demos and tests; a real party runs :func:`make_party_key` itself)."""
    key_path, csr_path = make_party_key(out, role)
    cert_path = sign_party(ca_folder, csr_path, role, hosts, out / f"{role}.pem")
    ca_copy = out / "ca.pem"
    if ca_copy.resolve() != (ca_folder / "ca.pem").resolve():
        ca_copy.write_bytes((ca_folder / "ca.pem").read_bytes())
    return PartyCredentials(role, ca_copy, cert_path, key_path)
