"""What a hospital runs on its own host: its SuperNode's argv and node config (Flower-free).

The SuperNode dials out to the coordinator's SuperLink, verifies the SuperLink's TLS
certificate against the coordinator's CA certificate, and proves who it is with its own
private key, whose public half the coordinator registered. Its node config tells the
ClientApp where this site's data and state live; the images never leave the hospital.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from task.federation.node import DATA_PATH, DEVICE, SITE_NAME, STATE_DIR
from task.runtime.run_options import check_device

#: The SuperNode's Runtime API port when none is given (Flower's default).
RUNTIME_PORT = 9094
#: Node-config keys of the policy and secure aggregation. Written out here so that this
#: module (and the command that starts a SuperNode) does not load Flower; a test checks
#: that they equal ``client.policy``'s and ``client.secure``'s.
POLICY_KEY, IDENTITY_KEY, ROSTER = "site-policy", "identity-key", "roster"


def node_config(
    *,
    data_path: Path,
    state_dir: Path,
    site_name: str | None = None,
    site_policy: Path | None = None,
    identity_key: Path | None = None,
    roster: Path | None = None,
    device: str | None = None,
) -> dict[str, str]:
    """A deployed site's node config, with absolute paths (the ClientApp runs elsewhere).
    ``device``: where this site computes (``cuda:1``...); None: the run config's ``device``."""
    config = {DATA_PATH: str(Path(data_path).resolve()), STATE_DIR: str(Path(state_dir).resolve())}
    if site_name:
        config[SITE_NAME] = site_name
    if device:
        config[DEVICE] = check_device(device, f"node config {DEVICE}")
    optional = {POLICY_KEY: site_policy, IDENTITY_KEY: identity_key, ROSTER: roster}
    config |= {key: str(Path(path).resolve()) for key, path in optional.items() if path}
    return config


def node_config_arg(config: Mapping[str, object]) -> str:
    """``--node-config``'s value: ``key="value"`` pairs; Flower parses values as TOML, and a
    JSON string is a TOML basic string. Flower splits the pairs with a pattern that ends a
    value at its next double quote, so a value holding one is refused (ValueError)."""
    for key, value in config.items():
        if '"' in str(value):
            raise ValueError(f"node config {key} {str(value)!r}: Flower cannot pass a '\"'")
    return " ".join(f"{key}={json.dumps(str(value))}" for key, value in config.items())


def supernode_entry(bin_dir: Path | None = None) -> list[str]:
    """The argv that starts a SuperNode: Flower's, with its polls paced by
    :mod:`client.supernode` (Flower's own loop waits 3 s between looks for a message)."""
    python = (bin_dir / "python") if bin_dir is not None else Path(sys.executable)
    return [str(python), "-m", "client.supernode"]


def supernode_command(
    *,
    superlink: str,
    ca_cert: Path,
    private_key: Path,
    config: Mapping[str, object],
    runtime_port: int | None = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    poll_interval: float | None = None,
    bin_dir: Path | None = None,
) -> list[str]:
    """A SuperNode (:func:`supernode_entry`) dialling ``superlink`` (``HOST:PORT``) with
    TLS verified against ``ca_cert`` and authenticated with ``private_key``, with node
    config ``config``.

    ``runtime_port``: the local port its ClientApps talk to (Flower's default: 9094);
    ``max_retries`` / ``max_wait_time``: None keeps reconnecting, as a site should;
    ``poll_interval``: seconds between looks for a message (None: ``client.pacing``'s).
    """
    args = [
        *supernode_entry(bin_dir),
        "--superlink",
        superlink,
        "--root-certificates",
        str(ca_cert),
        "--auth-supernode-private-key",
        str(private_key),
        "--node-config",
        node_config_arg(config),
    ]
    # The Runtime API its ClientApps (or its warm executor) talk to: loopback only.
    args += ["--host", "127.0.0.1", "--port", str(runtime_port or RUNTIME_PORT)]
    if max_retries is not None:
        args += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        args += ["--max-wait-time", str(max_wait_time)]
    if poll_interval is not None:
        args += ["--poll-interval", str(poll_interval)]
    return args


def warm_isolation_args(secret: Path) -> list[str]:
    """The SuperNode flags that leave its ClientApps to the warm executor, after writing a
    fresh 32-byte secret to ``secret`` (readable by this user only) that authenticates the
    two; the executor is given the same file (:func:`executor_command`)."""
    secret.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret.touch(mode=0o600)
    secret.write_bytes(os.urandom(32))
    return ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]


def executor_command(runtime_port: int, secret: Path, supernode_pid: int) -> list[str]:
    """The warm executor (:mod:`client.executor`) of the SuperNode ``supernode_pid``,
    whose Runtime API listens on ``127.0.0.1:runtime_port``."""
    return [
        sys.executable,
        "-m",
        "client.executor",
        "--insecure",  # loopback only, and HMAC-authenticated with ``secret``
        "--runtime-api-address",
        f"127.0.0.1:{runtime_port}",
        "--superexec-auth-secret-file",
        str(secret),
        "--parent-pid",
        str(supernode_pid),
    ]


def check_node_private_key(path: Path) -> None:
    """ValueError (naming ``path``) unless it holds an unencrypted OpenSSH ECDSA private
    key, the kind ``flower-supernode --auth-supernode-private-key`` loads."""
    if not path.is_file():
        raise ValueError(f"SuperNode private key {path} does not exist")
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ValueError(f"{path} is not an unencrypted OpenSSH private key ({err})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}; SuperNodes need an ECDSA key")
