"""The control channel: framing, typed messages and refusals, over a real socket pair."""

from __future__ import annotations

import socket
import struct

import pytest

from mpc.inference import wire


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_message_round_trip(pair) -> None:
    a, b = pair
    wire.send(a, {"type": "request", "version": wire.VERSION, "n_images": 3, "batch": 2})
    assert wire.recv(b, expect="request") == {
        "type": "request",
        "version": wire.VERSION,
        "n_images": 3,
        "batch": 2,
    }


def test_unexpected_type_and_peer_error_are_named(pair) -> None:
    a, b = pair
    wire.send(a, {"type": "hello"})
    with pytest.raises(wire.ProtocolError, match="expected a 'session' message, got 'hello'"):
        wire.recv(b, expect="session")
    wire.send(a, {"type": "error", "message": "n_images=0 must be 1..8"})
    with pytest.raises(wire.ProtocolError, match=r"peer refused: n_images=0 must be 1\.\.8"):
        wire.recv(b, expect="session")


def test_oversized_garbled_and_truncated_messages_are_refused(pair) -> None:
    a, b = pair
    a.sendall(struct.pack("!I", wire.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(wire.ProtocolError, match="announced a message of"):
        wire.recv(b)
    a.sendall(struct.pack("!I", 5) + b"nojso")
    with pytest.raises(wire.ProtocolError, match="not JSON"):
        wire.recv(b)
    a.sendall(struct.pack("!I", 10) + b"{}")
    a.close()
    with pytest.raises(wire.ProtocolError, match="connection closed with 8 of 10 bytes unread"):
        wire.recv(b)


def test_version_and_address_checks() -> None:
    wire.check_version({"version": wire.VERSION})
    with pytest.raises(wire.ProtocolError, match="version 0"):
        wire.check_version({"version": 0})
    assert wire.parse_address("10.0.0.5:50070") == ("10.0.0.5", 50070)
    for bad in ("localhost", ":50070", "host:0", "host:http", "host:70000"):
        with pytest.raises(ValueError, match=repr(bad)):
            wire.parse_address(bad)
