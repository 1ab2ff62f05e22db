"""Mutually authenticated TLS 1.3 between the parties, checked for role before any share.

Both ends present a certificate of the consortium CA (:mod:`mpc.channel.certs`). The
connecting party checks that the listener's certificate names the host it dialled and the
role it expects there; the listener checks that the connecting party's names a role it is
waiting for. Only then does a party say which session it joins, and only after the
listener's answer does the first share move. Anything else (no certificate, another CA, a
wrong role, plaintext, another session) is refused and the listener keeps waiting for the
right party until its deadline.

``insecure=True`` replaces TLS with plain TCP and trusts the role a peer claims: for local
experiments only, and it says so on every connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import sys
import time
from collections.abc import Collection
from typing import NoReturn

from mpc.channel.certs import ROLE_URI_PREFIX, PartyCredentials
from mpc.inference import wire

log = logging.getLogger(__name__)
INSECURE_WARNING = (
    "INSECURE: encrypted-diagnosis traffic is in the clear and unauthenticated; "
    "anyone on the network can read the shares or take a party's place"
)


class ChannelRefused(ConnectionError):
    """A peer failed authentication, named the wrong role or session, or refused us."""


def server_context(creds: PartyCredentials) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(creds.ca_cert))
    ctx.load_cert_chain(str(creds.cert), str(creds.key))
    ctx.num_tickets = 0  # no resumption: every connection authenticates afresh
    return ctx


def client_context(creds: PartyCredentials) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and host name checks
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(creds.ca_cert))
    ctx.load_cert_chain(str(creds.cert), str(creds.key))
    return ctx


def peer_role(sock: ssl.SSLSocket) -> str | None:
    """The role the peer's (verified) certificate names, or None."""
    cert = sock.getpeercert() or {}
    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    roles = [u[len(ROLE_URI_PREFIX) :] for u in uris if u.startswith(ROLE_URI_PREFIX)]
    return roles[0] if len(roles) == 1 else None


def secure_client(
    raw: socket.socket, creds: PartyCredentials | None, host: str, expect: str
) -> socket.socket:
    """The TLS end of a connection we dialled to ``host``: its certificate must chain to the
    consortium CA, name ``host`` and the role ``expect`` (``creds=None``: plain, loudly)."""
    if creds is None:
        log.warning(INSECURE_WARNING)
        return raw
    sock = client_context(creds).wrap_socket(raw, server_hostname=host)
    got = peer_role(sock)
    if got != expect:
        sock.close()
        raise ChannelRefused(f"{host} presents the role {got!r}, not the {expect}")
    return sock


def secure_server(
    raw: socket.socket, creds: PartyCredentials | None, expect: Collection[str]
) -> tuple[str | None, socket.socket]:
    """The TLS end of a connection we accepted, and the role its certificate names (None
    when insecure); a role not in ``expect`` is refused."""
    if creds is None:
        log.warning(INSECURE_WARNING)
        return None, raw
    sock = server_context(creds).wrap_socket(raw, server_side=True)
    role = peer_role(sock)
    if role not in expect:
        sock.close()
        raise ChannelRefused(f"a peer with the role {role!r} is not one of {sorted(expect)}")
    return role, sock


def connect(
    address: tuple[str, int],
    creds: PartyCredentials | None,
    expect: str,
    session: str,
    role: str,
    timeout: float,
) -> socket.socket:
    """Dial the party ``expect`` at ``address``, join ``session`` as ``role``; the socket
    once the listener accepted. ``creds=None`` is the insecure mode."""
    raw = dial(address, timeout)
    try:
        sock = secure_client(raw, creds, address[0], expect)
        wire.send(sock, {"type": "join", "session": session, "role": role})
        wire.recv(sock, expect="joined")
        return sock
    except (ssl.SSLError, wire.ProtocolError) as err:
        raw.close()
        raise ChannelRefused(f"{expect} at {address[0]}:{address[1]} refused: {err}") from err
    except BaseException:
        raw.close()
        raise


def dial(address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection to ``address``, retried while nothing listens there yet."""
    deadline = time.monotonic() + timeout
    while True:  # the listener may still be starting
        try:
            return socket.create_connection(address, timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def accept(
    listener: socket.socket,
    creds: PartyCredentials | None,
    roles: Collection[str],
    session: str,
    timeout: float,
) -> dict[str, socket.socket]:
    """Wait for one connection from each of ``roles`` in ``session``; refuse the rest."""
    joined: dict[str, socket.socket] = {}
    deadline = time.monotonic() + timeout
    while len(joined) < len(roles):
        left = deadline - time.monotonic()
        if left <= 0:
            for sock in joined.values():
                sock.close()
            missing = sorted(set(roles) - set(joined))
            raise ChannelRefused(f"no authenticated {', '.join(missing)} within {timeout:.0f} s")
        listener.settimeout(left)
        try:
            raw, peer = listener.accept()
        except TimeoutError:
            continue
        try:
            role, joining, sock = admit(raw, creds, set(roles) - set(joined), left)
            if joining != session:
                refuse(sock, "another session")
        except (ChannelRefused, ssl.SSLError, wire.ProtocolError, OSError) as err:
            log.warning("refused a connection from %s:%s: %s", peer[0], peer[1], err)
            raw.close()
            continue
        wire.send(sock, {"type": "joined"})
        joined[role] = sock
    return joined


def admit(
    raw: socket.socket, creds: PartyCredentials | None, waiting: Collection[str], timeout: float
) -> tuple[str, str, socket.socket]:
    """Authenticate one accepted connection: its role (from its certificate), the session
    it asks to join, and the TLS socket. The caller answers ``joined`` or refuses."""
    raw.settimeout(min(timeout, 30.0))
    role, sock = secure_server(raw, creds, waiting)  # TLS: the certificate's role, checked
    hello = wire.recv(sock, expect="join")
    if creds is None:  # insecure: whatever role the peer claims
        role = hello.get("role")
        if role not in waiting:
            refuse(sock, f"this port waits for {sorted(waiting)}, not for {role!r}")
    session = hello.get("session")
    if not isinstance(session, str) or not session:
        refuse(sock, "no session named")
    return role, session, sock


def refuse(sock: socket.socket, reason: str) -> NoReturn:
    with contextlib.suppress(OSError):  # the refusal is sent if the peer still listens
        wire.send(sock, {"type": "error", "message": reason})
    raise ChannelRefused(reason)


def credentials(folder: str | None, role: str, *, insecure: bool) -> PartyCredentials | None:
    """A party's TLS credentials from ``folder``; None with ``--insecure``, said loudly on
    standard error, since a user must not miss that nothing is protected."""
    if insecure:
        print(f"WARNING: {INSECURE_WARNING}", file=sys.stderr, flush=True)
        return None
    if not folder:
        raise ValueError(f"the {role} needs its credentials folder (or --insecure)")
    return PartyCredentials.from_folder(folder, role)
