"""The control channel between the diagnosis client and the model-owner service.

Length-prefixed JSON over TCP. It carries only public facts: the model's architecture and
preprocessing (both parties must build the same CrypTen graph), the number of images and the
batch size, and where the session's parties meet. Images, weights and predictions never
travel here: they exist only as secret shares inside the CrypTen session.

Messages (``type``):

* ``hello`` (service -> client): ``version``, ``config`` (the checkpoint's inference config
  without weights), ``max_images``, ``max_batch``, ``session_timeout``.
* ``request`` (client -> service): ``version``, ``n_images``, ``batch``.
* ``session`` (service -> client): ``rendezvous`` (``tcp://HOST:PORT``), ``session``.
* ``done`` (service -> client): ``status`` (``ok`` or ``error``), ``message``.
* ``error`` (either way): ``message``; the sender closes the connection after it.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

#: Protocol version; a peer speaking another version is refused by name.
VERSION = 1
#: Largest control message accepted (the hello with its config is a few KB).
MAX_MESSAGE_BYTES = 1 << 20
_HEADER = struct.Struct("!I")


class ProtocolError(RuntimeError):
    """The peer sent something that is not a valid control message, or closed early."""


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one JSON message with its 4-byte big-endian length."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    sock.sendall(_HEADER.pack(len(body)) + body)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ProtocolError(f"connection closed with {left} of {n} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket, expect: str | None = None) -> dict[str, Any]:
    """Receive one message; with ``expect``, anything but that type (or a peer's ``error``)
    raises :class:`ProtocolError` naming what arrived."""
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"peer announced a message of {length} bytes (max {MAX_MESSAGE_BYTES})")
    try:
        message = json.loads(_recv_exact(sock, length))
    except ValueError as err:
        raise ProtocolError(f"peer sent a message that is not JSON: {err}") from err
    if not isinstance(message, dict) or "type" not in message:
        raise ProtocolError(f"peer sent {str(message)[:80]!r}, not a typed message")
    if message["type"] == "error" and expect != "error":
        raise ProtocolError(f"peer refused: {message.get('message', '(no reason given)')}")
    if expect is not None and message["type"] != expect:
        raise ProtocolError(f"expected a '{expect}' message, got '{message['type']}'")
    return message


def check_version(message: dict[str, Any]) -> None:
    if message.get("version") != VERSION:
        raise ProtocolError(
            f"peer speaks protocol version {message.get('version')!r}; this side speaks {VERSION}"
        )


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` to ``(host, port)``, with an error naming the bad value."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {text!r} is not HOST:PORT (port 1-65535)")
    return host, int(port)
