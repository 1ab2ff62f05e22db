"""A hospital's SuperNode: Flower's ``flower-supernode``, pacing its polls:
``python -m client.supernode [--poll-interval S] <flower-supernode flags>``.

Flower 1.41 and 1.42 hard-code the SuperNode's waits: 3 s before it asks the SuperLink
again when no message was waiting, and 0.5 s between its looks for a finished ClientApp's
reply. A secure round sends each site ten messages, each sent only after every site
answered the one before, so the 3 s idle wait alone is paid about ten times a round.

This entry point runs Flower's own SuperNode unchanged except for its waits
(:mod:`client.pacing`): the idle wait becomes ``--poll-interval`` (default 0.2 s).
Everything else (TLS, node authentication, process isolation, heartbeats) is Flower's. The
price is one authenticated ``PullMessages`` request per site per ``--poll-interval`` while
idle; a coordinator serving many sites raises it.
"""

from __future__ import annotations

import argparse
import sys

from client.pacing import FLOWER_IDLE_WAIT, POLL_INTERVAL, pace_object_pulls, pace_supernode


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds above 0 and at most Flower's own 3 s."""
    value = float(text)
    if not 0 < value <= FLOWER_IDLE_WAIT:
        raise argparse.ArgumentTypeError(f"--poll-interval {text}: give 0 < seconds <= 3")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll-interval", type=positive_seconds, default=POLL_INTERVAL)
    args, flower_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    pace_supernode(args.poll_interval)
    pace_object_pulls()
    from flwr.supercore.logger import update_console_handler
    from flwr.supernode.cli import flower_supernode

    # A site's operator reads this log beside its audit log: every line with its time.
    update_console_handler(timestamps=True)

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
