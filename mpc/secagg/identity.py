"""Long-term site identities and the federation's roster, as files.

Each site signs its round keys with its own private key (OpenSSH format, Ed25519 or the
NIST P-384 keys Flower's SuperNode authentication uses); every site and the server hold the
roster, a JSON object ``{site name: OpenSSH public key line}``, and refuse round keys that do
not verify against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mpc.secagg import crypto
from mpc.secagg.protocol import Roster


def load_identity_file(path: str | os.PathLike) -> crypto.IdentityPrivateKey:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"secure aggregation identity key {path} does not exist")
    try:
        return crypto.load_identity(path.read_bytes())
    # TypeError: an encrypted key (no password is given); UnsupportedAlgorithm: e.g. DSA.
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"{path} is not an unencrypted OpenSSH or PEM private key: {err}") from err


def load_roster(path: str | os.PathLike) -> Roster:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"secure aggregation roster {path} does not exist")
    try:
        lines = json.loads(path.read_bytes())
        if not isinstance(lines, dict) or not all(isinstance(v, str) for v in lines.values()):
            raise ValueError(f"expected {{site name: public key line}}, got {lines!r:.80}")
        return Roster.from_lines(lines)
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; UnsupportedAlgorithm: e.g. DSA.
    except (ValueError, UnsupportedAlgorithm, RecursionError) as err:
        raise ValueError(
            f"roster {path} is not a JSON object of OpenSSH public keys: {err}"
        ) from err


def write_identities(folder: Path, names: Iterable[str]) -> Path:
    """Make an Ed25519 identity per site in ``folder`` (``<name>.key``, mode 0600) and the
    roster ``roster.json``; returns the roster's path. For simulations and local demos: a
    real hospital makes its own key and sends only the public line to the coordinator."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = {}
    for name in names:
        key = ed25519.Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(folder / f"{name}.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        lines[name] = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
    roster = folder / "roster.json"
    roster.write_text(json.dumps(lines, indent=2))
    return roster


def public_line(key: crypto.IdentityPrivateKey | crypto.IdentityPublicKey) -> str:
    """The OpenSSH public key line of ``key`` (a private key gives its public half)."""
    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def fingerprint(line: str) -> str:
    """OpenSSH's SHA-256 fingerprint of a public key line (``ssh-keygen -lf`` prints the
    same), for hospitals and the coordinator to compare by phone or e-mail."""
    crypto.load_identity_public(line)  # refuses what is not an Ed25519 or ECDSA key
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
