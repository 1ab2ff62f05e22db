"""Key fingerprints for the roster: ``python -m scripts.fingerprint FILE [FILE ...]``.

A roster is only as good as the way its keys reached the coordinator. Each hospital prints
the fingerprint of its own identity key, the coordinator prints those of the roster it
distributes, and the two compare them out of band (phone, signed e-mail) before the first
round. FILE is a roster (``roster.json``), a private identity key (``<site>.key``) or a
public key line (``.pub``); the fingerprints are OpenSSH's, so ``ssh-keygen -lf`` agrees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mpc.secagg.identity import fingerprint, load_identity_file, load_roster, public_line


def fingerprints(path: Path) -> dict[str, str]:
    """``{name: fingerprint}`` of every key in ``path``."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    if text.lstrip().startswith("{"):
        load_roster(path)  # the same checks as a site's
        return {name: fingerprint(line) for name, line in json.loads(text).items()}
    if text.lstrip().startswith(("ssh-", "ecdsa-")):
        return {path.stem: fingerprint(text.strip())}
    return {path.stem: fingerprint(public_line(load_identity_file(path)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        try:
            for name, fp in fingerprints(path).items():
                print(f"{name}\t{fp}")
        except (OSError, ValueError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
