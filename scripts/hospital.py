"""A hospital's commands: ``python -m scripts.hospital {key,supernode}``.

In order (docs/deployment.md):

1. ``key --out keys --name hospital-a``: the SuperNode key pair. Send ``keys/hospital-a.pub``
   to the coordinator and read the printed fingerprint out to them by phone; the private
   key ``keys/hospital-a`` never leaves this host.
2. ``supernode --superlink superlink.example.org:9092 --ca ca.pem --key keys/hospital-a
   --data /data/cxr/train --state /var/lib/primia --name hospital-a``: the SuperNode, in
   the foreground (Ctrl-C or SIGTERM stops it), once the coordinator has registered the key.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from client.node import (
    RUNTIME_PORT,
    check_node_private_key,
    executor_command,
    node_config,
    supernode_command,
    warm_isolation_args,
)
from client.supernode import positive_seconds
from mpc.secagg.identity import fingerprint
from scripts._cli import InputError, existing_file, fail, flower_env, parse_address, run_foreground
from server.pki import certificate_fingerprint, make_node_key

#: A site name: also a file name, so no path separators and no leading dot.
SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _site(name: str) -> str:
    if not SITE.fullmatch(name):
        raise InputError(f"site name {name!r}: use letters, digits, '.', '_', '-' (max 64)")
    return name


def key(args: argparse.Namespace) -> int:
    try:
        private, public = make_node_key(args.out, _site(args.name), overwrite=args.force)
    except ValueError as err:
        return fail(str(err))
    except FileExistsError as err:
        return fail(f"{err} (pass --force; the coordinator must then register the new key)")
    print(f"private key (mode 600, never leaves this host): {private}")
    print(f"public key (send to the coordinator):            {public}")
    print(f"fingerprint (read it out to the coordinator):    {fingerprint(public.read_text())}")
    return 0


def _check_supernode_inputs(args: argparse.Namespace) -> None:
    """InputError (a ValueError) naming the first unusable value or file."""
    parse_address(args.superlink)
    existing_file(args.ca, "CA certificate")
    check_node_private_key(args.key)
    if not args.data.exists():
        raise InputError(f"data path {args.data} does not exist")
    optional = {"site policy": args.site_policy, "identity key": args.identity_key}
    for what, path in (optional | {"roster": args.roster}).items():
        if path is not None:
            existing_file(path, what)
    if args.name is not None:
        _site(args.name)
    if args.runtime_port is not None and not 0 < args.runtime_port < 65536:
        raise InputError(f"runtime port {args.runtime_port} is not in 1..65535")


def supernode(args: argparse.Namespace) -> int:
    try:
        _check_supernode_inputs(args)
        ca_fp = certificate_fingerprint(args.ca)
        config = node_config(
            data_path=args.data,
            state_dir=args.state,
            site_name=args.name,
            site_policy=args.site_policy,
            identity_key=args.identity_key,
            roster=args.roster,
            device=args.device,
        )
        argv = supernode_command(
            superlink=args.superlink,
            ca_cert=args.ca.resolve(),
            private_key=args.key.resolve(),
            config=config,
            runtime_port=args.runtime_port,
            poll_interval=args.poll_interval,
        )
    except ValueError as err:
        return fail(str(err))
    args.state.mkdir(parents=True, exist_ok=True)
    print(f"SuperNode -> {args.superlink}, CA fingerprint SHA256 {ca_fp}")
    if args.cold:
        return run_foreground(argv, flower_env())
    # The warm executor (client/executor.py) launches this SuperNode's ClientApps.
    secret = args.state / "superexec.secret"
    argv += warm_isolation_args(secret)
    port = args.runtime_port or RUNTIME_PORT
    return run_foreground(
        argv, flower_env(), companion=lambda pid: executor_command(port, secret, pid)
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m scripts.hospital",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)
    k = sub.add_parser("key", help="make the SuperNode key pair and print its fingerprint")
    k.add_argument("--out", type=Path, required=True, help="folder for the key pair")
    k.add_argument("--name", required=True, help="the site's name (the key's file name)")
    k.add_argument("--force", action="store_true", help="replace an existing key")
    k.set_defaults(run=key)

    s = sub.add_parser("supernode", help="run the SuperNode in the foreground")
    s.add_argument("--superlink", required=True, help="the coordinator's HOST:PORT")
    s.add_argument("--ca", type=Path, required=True, help="the coordinator's ca.pem")
    s.add_argument("--key", type=Path, required=True, help="the private key `key` made")
    s.add_argument("--data", type=Path, required=True, help="this site's image folder")
    s.add_argument("--state", type=Path, required=True, help="folder for the site's state")
    s.add_argument("--name", help="the site's name (default: its data path)")
    s.add_argument("--site-policy", type=Path, help="the site's policy file (client/policy.py)")
    s.add_argument("--identity-key", type=Path, help="secure aggregation identity key")
    s.add_argument("--roster", type=Path, help="secure aggregation roster the site checked")
    s.add_argument(
        "--device",
        help="where this site trains: auto, cpu, cuda, cuda:N or mps (default: the run's)",
    )
    s.add_argument(
        "--runtime-port", type=int, help="local port for its ClientApps (Flower's default 9094)"
    )
    s.add_argument(
        "--poll-interval",
        type=positive_seconds,
        help="seconds between the SuperNode's looks for a message (default 0.2; Flower: 3)",
    )
    s.add_argument(
        "--cold",
        action="store_true",
        help="Flower's own fresh ClientApp process per message, without the warm executor",
    )
    s.set_defaults(run=supernode)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
