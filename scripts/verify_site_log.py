"""Verify sites' audit logs: ``python -m scripts.verify_site_log PATH [PATH...]``.

A PATH is a ``site-log.jsonl`` or a folder searched for them (a site's state folder, a run
folder). For each log: its entries, rounds, last ε and head hash, then ``OK``; or the file,
line and what is wrong. Exit status 1 if any log does not verify. Keep the head hash
somewhere the site cannot rewrite (an ethics board's records): a log cut at its end or
rewritten from some entry onwards verifies on its own, but no longer contains that hash,
which ``--anchor HASH`` checks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.site_log import LOG_FILE, SiteLogError
from client.site_log_verify import verify


def _logs(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            logs = sorted(path.rglob(LOG_FILE))
            if not logs:
                raise FileNotFoundError(f"no {LOG_FILE} under {path}")
            found.extend(logs)
        else:
            found.append(path)
    return found


def _rounds(rounds: tuple[int, ...]) -> str:
    if len(rounds) < 2:
        return str(rounds[0]) if rounds else "none"
    if list(rounds) == list(range(rounds[0], rounds[-1] + 1)):
        return f"{rounds[0]}-{rounds[-1]}"
    return ",".join(map(str, rounds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path, help=f"{LOG_FILE} files or folders")
    parser.add_argument(
        "--anchor",
        metavar="HASH",
        help="a head hash recorded earlier, which the log must still contain (one log only)",
    )
    args = parser.parse_args(argv)
    try:
        logs = _logs(args.paths)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.anchor and len(logs) != 1:
        parser.error(f"--anchor applies to one log, {len(logs)} given")
    failed = 0
    for path in logs:
        try:
            s = verify(path, anchor=args.anchor)
        except (SiteLogError, OSError) as err:
            print(f"FAILED {err}", file=sys.stderr)
            failed += 1
            continue
        print(
            f"{path}: site {s.site}, {s.entries} entries ({s.replies} replies, {s.errors} "
            f"errors), runs {','.join(map(str, s.run_ids)) or 'none'}, rounds "
            f"{_rounds(s.rounds)}, last ε {s.last_epsilon}, head {s.head}  OK"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
