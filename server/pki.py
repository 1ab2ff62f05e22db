"""A private certificate authority and SuperNode keys for a federation, with `cryptography`.

The coordinator makes a CA, signs the SuperLink's TLS certificate with it (for the
addresses the SuperLink serves), and gives each hospital the CA certificate to verify the
SuperLink. Each hospital makes its own SuperNode key pair (NIST P-384, OpenSSH format, as
Flower's SuperNode authentication expects) and sends only the public key to the
coordinator, who registers it; a SuperNode whose key is not registered is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mpc.pki import leaf_certificate, pkcs8, subject_alt_names, write_ca, write_private

SERVER_AUTH = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_tls(
    folder: Path, hosts: Sequence[str], ips: Sequence[str] = (), *, overwrite: bool = True
) -> TlsFiles:
    """A CA and a server certificate for ``hosts`` (DNS names or IP addresses) and ``ips``.

    ``overwrite=False`` refuses (FileExistsError) a folder that already holds a CA: a new
    CA would silently cut off every hospital that trusts the old one.
    """
    sans = subject_alt_names(hosts, ips)
    ca_cert, ca_key = write_ca(folder, overwrite=overwrite)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = leaf_certificate(
        key.public_key(), str(sans[0].value), sans, [SERVER_AUTH], ca_cert, ca_key
    )
    ca_path = folder / "ca.pem"
    cert_path = folder / "superlink.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = write_private(folder / "superlink.key", pkcs8(key))
    return TlsFiles(ca_path, cert_path, key_path)


def make_node_key(folder: Path, name: str, *, overwrite: bool = True) -> tuple[Path, Path]:
    """A SuperNode key pair: ``<name>`` (private, OpenSSH, mode 600) and ``<name>.pub``.

    ``overwrite=False`` refuses (FileExistsError) an existing key: a new one would no
    longer match the public key the coordinator registered.
    """
    for path in (folder / name, folder / f"{name}.pub"):
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} exists; refusing to replace the SuperNode key")
    key = ec.generate_private_key(ec.SECP384R1())
    private = write_private(
        folder / name,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = folder / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return private, public


def existing_tls(folder: Path) -> TlsFiles:
    """The CA certificate and the SuperLink's certificate and key that a hospital's own
    PKI put in ``folder`` (``ca.pem``, ``superlink.pem``, ``superlink.key``)."""
    files = TlsFiles(folder / "ca.pem", folder / "superlink.pem", folder / "superlink.key")
    wanted = (files.ca_cert, files.server_cert, files.server_key)
    missing = [str(p) for p in wanted if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"TLS files missing: {', '.join(missing)}")
    return files


def certificate_fingerprint(path: Path) -> str:
    """The SHA-256 fingerprint of the PEM certificate in ``path`` (``AB:CD:...``, as
    ``openssl x509 -noout -fingerprint -sha256`` prints), for a hospital to check the CA
    certificate it received against the one the coordinator reads out."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except ValueError as err:
        raise ValueError(f"{path} is not a PEM certificate ({err})") from None
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()
