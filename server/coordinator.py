"""What the coordinator runs on its own host, as argv lists (Flower-free, no processes).

The coordinator serves one SuperLink with TLS (a certificate from its private CA, see
``server.pki``) and SuperNode authentication: only SuperNodes whose public keys it has
registered with ``flwr supernode register`` are let in. The flags are those of
``scripts.local_deployment.LocalDeployment``, which runs the same processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from mpc.secagg.identity import fingerprint
from server.pki import TlsFiles

#: The connection name written into a Flower home made for one ``flwr`` command.
CONNECTION = "primia"


def _bin(name: str, bin_dir: Path | None) -> str:
    return str((bin_dir or Path(sys.executable).parent) / name)


def superlink_command(
    *, host: str, port: int, tls: TlsFiles, database: Path, bin_dir: Path | None = None
) -> list[str]:
    """``flower-superlink`` serving TLS with ``tls`` on ``host:port`` (Fleet, Control and
    Runtime APIs share it) and letting in registered SuperNodes only.

    ``--disable-runtime-dependency-installation``: by default the SuperLink would install
    the app's ``[project].dependencies`` into a fresh environment with uv, which pulls a
    CUDA torch; the app runs in the environment ``make setup`` built instead.
    """
    return [
        _bin("flower-superlink", bin_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--database",
        str(database),
        "--disable-runtime-dependency-installation",
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        "--ssl-certfile",
        str(tls.server_cert),
        "--ssl-keyfile",
        str(tls.server_key),
        "--enable-supernode-auth",
    ]


def connection_toml(address: str, ca_cert: Path, name: str = CONNECTION) -> str:
    """A Flower home's ``config.toml`` naming one SuperLink connection, reached with TLS
    verified against ``ca_cert`` (as ``LocalDeployment`` writes its own)."""
    return (
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
        f"address = {json.dumps(address)}\nroot-certificates = {json.dumps(str(ca_cert))}\n"
    )


def register_command(
    public_key: Path, connection: str, *, name: str | None = None, bin_dir: Path | None = None
) -> list[str]:
    """``flwr supernode register`` of a hospital's public key over ``connection`` (a name
    in the Flower home's ``config.toml``)."""
    args = [_bin("flwr", bin_dir), "supernode", "register", str(public_key), connection]
    return [*args, "--name", name] if name else args


def read_node_public_key(path: Path) -> str:
    """The OpenSSH public key line in ``path``: an ECDSA key, as Flower's SuperNode
    authentication requires. ValueError (naming ``path``) for anything else."""
    if not path.is_file():
        raise ValueError(f"public key file {path} does not exist")
    line = path.read_text(errors="replace").strip()
    try:
        key = load_ssh_public_key(line.encode())
    except (ValueError, TypeError) as err:  # cryptography's message for a garbled key
        raise ValueError(f"{path} is not an OpenSSH public key line ({err})") from None
    except UnsupportedAlgorithm as err:  # e.g. a DSA key
        raise ValueError(f"{path} holds an unsupported key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}; SuperNodes need an ECDSA key")
    return line


def node_fingerprint(path: Path) -> str:
    """The SHA-256 fingerprint of the SuperNode public key in ``path``, in the form
    ``scripts.fingerprint`` and ``ssh-keygen -lf`` print."""
    return fingerprint(read_node_public_key(path))
