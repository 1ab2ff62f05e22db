"""The dealer of encrypted diagnosis, run by a third organisation on its own machine.

``python -m server.dealer [--insecure] [--max-sessions N] [overrides of conf/inference.yaml]``
(``dealer.credentials=DIR``, ``dealer.listen=HOST:PORT``)

CrypTen's trusted third party (TTP) hands the two computing parties their correlated
randomness: multiplication triples, and the masks of comparisons and conversions. It is
long-lived and serves session after session. For each session the model owner and the
data owner each reach it over their own connection, mutually authenticated by the
consortium's TLS certificates (:mod:`mpc.channel`); the two connections that name the
same session are paired, and a forked process serves that session alone, so that a
session that fails ends without touching the next.

What it sees: its own random seeds and the sizes of what it deals. Never an image, a
weight, a share of either, or a prediction. It must not collude with either party:
whoever holds the dealer's randomness and one party's shares can open the other's.

It computes on the CPU, whatever devices the parties compute on: it draws from the seeds it
shares with each party the numbers that party draws, which are drawn on the CPU at every
party (:mod:`mpc.crypten_device`), so it needs no GPU.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import signal
import socket
import ssl
import sys
import time

from mpc.channel import tls
from mpc.channel.certs import DATA_OWNER, DEALER, MODEL_OWNER, PartyCredentials
from mpc.channel.links import Link, Links
from mpc.channel.session import listen
from mpc.inference import wire
from mpc.inference.party import DEALER as DEALER_RANK
from mpc.inference.party import deal, join_links
from task.config import compose_config

log = logging.getLogger("dealer")
PARTIES = (MODEL_OWNER, DATA_OWNER)


def serve_session(socks: dict[str, socket.socket], session: str, timeout: float) -> None:
    """One session's TTP, in a process of its own, over the two parties' links."""
    links = Links({rank: Link(socks[role], role) for rank, role in enumerate(PARTIES)}, timeout)
    deal(join_links(DEALER_RANK, links))


class Dealer:
    """Pairs the two parties of each session and serves it in a forked process."""

    def __init__(self, creds: PartyCredentials | None, session_timeout: float) -> None:
        if creds is not None and creds.role != DEALER:
            raise ValueError(f"the dealer needs a dealer certificate, not the {creds.role}'s")
        self.creds, self.timeout = creds, session_timeout
        self.waiting: dict[str, tuple[float, dict[str, socket.socket]]] = {}
        self.running: dict[str, mp.process.BaseProcess] = {}
        self.served: list[dict[str, object]] = []
        # fork: the child inherits the authenticated connections as they are, and CrypTen
        # already imported (a session does not wait for it)
        self._ctx = mp.get_context("fork")
        import mpc.crypten_compat  # noqa: F401

    def admit(self, raw: socket.socket, peer: str) -> None:
        """Authenticate one connection and file it under its session."""
        try:
            role, session, sock = tls.admit(raw, self.creds, PARTIES, self.timeout)
            _, joined = self.waiting.setdefault(session, (time.monotonic(), {}))
            if role in joined or session in self.running:
                tls.refuse(sock, f"session {session[:8]} already has its {role}")
            wire.send(sock, {"type": "joined"})
        except (tls.ChannelRefused, ssl.SSLError, wire.ProtocolError, OSError) as err:
            log.warning("refused %s: %s", peer, err)
            raw.close()
            return
        joined[role] = sock
        if len(joined) == len(PARTIES):
            self._start(session, self.waiting.pop(session)[1])

    def _start(self, session: str, socks: dict[str, socket.socket]) -> None:
        proc = self._ctx.Process(
            target=serve_session, args=(socks, session, self.timeout), name=f"ttp-{session[:8]}"
        )
        proc.start()
        for sock in socks.values():
            sock.close()  # the child holds the connections now
        self.running[session] = proc
        print(f"session {session[:8]}: dealing", flush=True)

    def reap(self) -> None:
        """Record ended sessions; drop half-joined ones older than the session timeout."""
        for session, proc in list(self.running.items()):
            if proc.exitcode is not None:
                status = "ok" if proc.exitcode == 0 else f"failed (exit code {proc.exitcode})"
                self.served.append({"session": session, "status": status})
                print(f"session {session[:8]}: {status}", flush=True)
                del self.running[session]
        now = time.monotonic()
        for session, (since, socks) in list(self.waiting.items()):
            if now - since > self.timeout:
                for sock in socks.values():
                    sock.close()
                del self.waiting[session]
                log.warning("session %s: the other party never came", session[:8])

    def serve(self, address: str, max_sessions: int | None = None) -> list[dict[str, object]]:
        with listen(address) as listener:
            host, port = listener.getsockname()[:2]
            print(f"dealer listening on {host}:{port}", flush=True)
            listener.settimeout(0.5)
            while max_sessions is None or len(self.served) < max_sessions:
                self.reap()
                try:
                    raw, addr = listener.accept()
                except TimeoutError:
                    continue
                self.admit(raw, f"{addr[0]}:{addr[1]}")
        return self.served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-sessions", type=int, default=None)
    parser.add_argument("--insecure", action="store_true", help="plain TCP: local experiments")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/inference.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s", level=logging.INFO)
    try:
        settings = compose_config(args.overrides, config_name="inference").dealer
        creds = tls.credentials(settings.credentials, DEALER, insecure=args.insecure)
        dealer = Dealer(creds, float(settings.session_timeout))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dealer.serve(str(settings.listen), args.max_sessions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
