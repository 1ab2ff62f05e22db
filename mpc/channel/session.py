"""Who dials whom in one encrypted-diagnosis session, and the links that result.

The data owner (a hospital, often behind a firewall) only dials out: to the model owner
and to the dealer. The model owner listens for the data owner and dials the dealer. The
dealer only listens. So no party waits on another in a circle: the dealer accepts in any
order, the model owner reaches the dealer before it accepts the data owner, and the data
owner's handshake with the model owner completes once that accept comes.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mpc.channel import tls
from mpc.channel.certs import DATA_OWNER, DEALER, MODEL_OWNER, PartyCredentials
from mpc.channel.links import Link, Links
from mpc.inference.wire import parse_address

RANKS = {MODEL_OWNER: 0, DATA_OWNER: 1, DEALER: 2}


@dataclass(frozen=True)
class Endpoints:
    """Where a session's listening parties are reached (``HOST:PORT``; public)."""

    model_owner: str
    dealer: str


def listen(address: str) -> socket.socket:
    """A listening socket on ``HOST:PORT`` (port 0: any free port)."""
    host, port = parse_address(address) if not address.endswith(":0") else (address[:-2], 0)
    return socket.create_server((host, port))


def open_links(
    role: str,
    session: str,
    endpoints: Endpoints,
    creds: PartyCredentials | None,
    listener: socket.socket | None,
    timeout: float,
) -> Links:
    """This party's links to the other two, authenticated (``creds=None``: insecure)."""
    mine = creds.role if creds is not None else role
    if mine != role:
        raise tls.ChannelRefused(f"credentials of the {mine} cannot act as the {role}")
    socks: dict[str, socket.socket] = {}
    if role in (MODEL_OWNER, DATA_OWNER):
        dealer = parse_address(endpoints.dealer)
        if role == DATA_OWNER:
            owner = parse_address(endpoints.model_owner)
            socks[MODEL_OWNER] = tls.connect(owner, creds, MODEL_OWNER, session, role, timeout)
        socks[DEALER] = tls.connect(dealer, creds, DEALER, session, role, timeout)
    waiting = {MODEL_OWNER: [DATA_OWNER], DEALER: [MODEL_OWNER, DATA_OWNER]}.get(role, [])
    if waiting:
        if listener is None:
            raise ValueError(f"the {role} needs a listening socket")
        socks.update(tls.accept(listener, creds, waiting, session, timeout))
    return Links({RANKS[peer]: Link(sock, peer) for peer, sock in socks.items()}, timeout)
