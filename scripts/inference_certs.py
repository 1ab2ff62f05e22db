"""Certificates for encrypted diagnosis between organisations.

The consortium (whoever runs the CA) and each party run their own step; private keys
never leave the machine that made them:

  python -m scripts.inference_certs ca   --out ca/                          # the consortium
  python -m scripts.inference_certs key  --role data-owner --out me/        # each party
  python -m scripts.inference_certs sign --ca ca/ --csr me/data-owner.csr \\
         --role data-owner --host hospital.example.org --out me/data-owner.pem  # the consortium

The party then puts the CA's ``ca.pem`` beside its key and certificate; that folder is its
``--credentials`` (dealer) or ``service.credentials`` / ``client.credentials``. Each
command prints the SHA-256 fingerprint of what it made, to be read out and compared.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpc.channel.certs import ROLES, make_consortium_ca, make_party_key, sign_party
from scripts._cli import fail
from server.pki import certificate_fingerprint


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("ca", help="make the consortium CA (ca.pem, ca.key)")
    ca.add_argument("--out", type=Path, required=True)
    key = sub.add_parser("key", help="make a party's key and signing request")
    key.add_argument("--role", choices=ROLES, required=True)
    key.add_argument("--out", type=Path, required=True)
    sign = sub.add_parser("sign", help="sign a party's request for its role and hosts")
    sign.add_argument("--ca", type=Path, required=True, help="folder with ca.pem and ca.key")
    sign.add_argument("--csr", type=Path, required=True)
    sign.add_argument("--role", choices=ROLES, required=True)
    sign.add_argument("--host", action="append", required=True, help="DNS name or IP; repeat")
    sign.add_argument("--out", type=Path, required=True, help="the certificate's path")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "ca":
            cert, _ = make_consortium_ca(args.out)
            print(f"consortium CA {cert}: SHA-256 {certificate_fingerprint(cert)}")
        elif args.command == "key":
            key, csr = make_party_key(args.out, args.role)
            print(f"{args.role} key {key} (keep it here); send {csr} to the consortium")
        else:
            cert = sign_party(args.ca, args.csr, args.role, args.host, args.out)
            print(f"{args.role} certificate {cert}: SHA-256 {certificate_fingerprint(cert)}")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        return fail(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
