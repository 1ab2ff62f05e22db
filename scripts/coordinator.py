"""The coordinator's commands: ``python -m scripts.coordinator {pki,register,superlink}``.

In order (docs/deployment.md):

1. ``pki --out pki --host superlink.example.org``: a private CA and the SuperLink's TLS
   certificate for its real host names (``--host``) and addresses (``--ip``). Send
   ``pki/ca.pem`` to every hospital; ``ca.key`` and ``superlink.key`` never leave.
2. ``superlink --tls pki --address 0.0.0.0:9092``: the SuperLink, with TLS and SuperNode
   authentication, in the foreground (Ctrl-C or SIGTERM stops it).
3. ``register --key hospital-a.pub --superlink superlink.example.org:9092 --ca pki/ca.pem``
   for each hospital, after comparing the fingerprint it shows with the one the hospital
   read out by phone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from scripts._cli import InputError, existing_file, fail, flower_env, parse_address, run_foreground
from server.coordinator import (
    CONNECTION,
    connection_toml,
    node_fingerprint,
    register_command,
    superlink_command,
)
from server.pki import certificate_fingerprint, existing_tls, make_tls


def pki(args: argparse.Namespace) -> int:
    try:
        files = make_tls(args.out, args.host, args.ip, overwrite=args.force)
    except ValueError as err:
        return fail(str(err))
    except FileExistsError as err:
        return fail(f"{err} (pass --force to make a new CA; every hospital then needs it)")
    print(f"CA certificate (send to every hospital): {files.ca_cert}")
    ca_fp = certificate_fingerprint(files.ca_cert)
    print(f"CA fingerprint (read it out to them):    SHA256 {ca_fp}")
    print(f"SuperLink certificate: {files.server_cert} for {', '.join([*args.host, *args.ip])}")
    print(f"private keys (mode 600, keep here): {args.out / 'ca.key'}, {files.server_key}")
    return 0


def _confirm(fingerprint: str, key: Path) -> bool:
    print(f"SuperNode key {key}\n  fingerprint {fingerprint}")
    try:
        answer = input("Does it match the fingerprint the hospital read out? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


def _register(argv: list[str], env: dict[str, str]) -> int:
    res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    print(res.stdout, end="")
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip()
        print(f"error: registering failed (flwr exit {res.returncode}): {detail}", file=sys.stderr)
        return 1
    return 0


def register(args: argparse.Namespace) -> int:
    try:
        fp = node_fingerprint(args.key)
        if args.superlink is not None:
            parse_address(args.superlink)
            ca = existing_file(args.ca, "CA certificate") if args.ca else None
            if ca is None:
                raise InputError("--superlink needs --ca CA.pem (the SuperLink's CA)")
    except ValueError as err:
        return fail(str(err))
    if not (args.yes or _confirm(fp, args.key)):
        print(f"not registered: {args.key}", file=sys.stderr)
        return 1
    key = args.key.resolve()
    if args.connection is not None:  # a connection in the user's own Flower home
        return _register(register_command(key, args.connection, name=args.name), flower_env())
    with tempfile.TemporaryDirectory(prefix="flwr-home-") as home:
        (Path(home) / "config.toml").write_text(connection_toml(args.superlink, ca))
        argv = register_command(key, CONNECTION, name=args.name)
        return _register(argv, flower_env(FLWR_HOME=home))


def superlink(args: argparse.Namespace) -> int:
    try:
        host, port = parse_address(args.address)
        tls = existing_tls(args.tls)
    except (ValueError, FileNotFoundError) as err:
        return fail(f"{err} (the SuperLink runs with TLS only)")
    args.database.parent.mkdir(parents=True, exist_ok=True)
    argv = superlink_command(host=host, port=port, tls=tls, database=args.database.resolve())
    print(f"SuperLink on {host}:{port}: TLS from {args.tls}, registered SuperNodes only")
    return run_foreground(argv, flower_env())


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m scripts.coordinator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pki", help="make the CA and the SuperLink's TLS certificate")
    p.add_argument("--out", type=Path, required=True, help="folder for the CA and certificate")
    p.add_argument("--host", action="append", default=[], help="a DNS name of the SuperLink")
    p.add_argument("--ip", action="append", default=[], help="an IP address of the SuperLink")
    p.add_argument("--force", action="store_true", help="replace an existing CA")
    p.set_defaults(run=pki)

    r = sub.add_parser("register", help="let a hospital's SuperNode key in")
    r.add_argument("--key", type=Path, required=True, help="the hospital's public key (.pub)")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--superlink", help="the SuperLink's HOST:PORT (with --ca)")
    where.add_argument("--connection", help="a connection in your Flower home's config.toml")
    r.add_argument("--ca", type=Path, help="the CA certificate (ca.pem) with --superlink")
    r.add_argument("--name", help="the SuperNode's name in the SuperLink (the site's name)")
    r.add_argument("--yes", action="store_true", help="skip the fingerprint confirmation")
    r.set_defaults(run=register)

    s = sub.add_parser("superlink", help="run the SuperLink in the foreground")
    s.add_argument("--tls", type=Path, required=True, help="the folder `pki` wrote")
    s.add_argument("--address", required=True, help="HOST:PORT to listen on, e.g. 0.0.0.0:9092")
    s.add_argument(
        "--database", type=Path, default=Path("superlink.db"), help="its state (registered keys)"
    )
    s.set_defaults(run=superlink)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "pki" and not (args.host or args.ip):
        return fail("pki needs at least one --host or --ip (the names hospitals dial)")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
