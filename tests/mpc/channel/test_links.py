"""The framed links: order, both directions at once, a peer that goes, a peer that stalls."""

from __future__ import annotations

import socket
import threading

import pytest

from mpc.channel.links import ChannelError, Link, Links

TAG = 1


def _pair(timeout: float = 10.0) -> tuple[Links, Links]:
    """Two ends of one TCP connection on the loopback interface."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname()[:2])
        b, _ = server.accept()
    return Links({1: Link(a, "b")}, timeout), Links({0: Link(b, "a")}, timeout)


def test_frames_arrive_whole_and_in_order() -> None:
    left, right = _pair()
    sizes = [0, 1, 9, 70_000, 3_000_000]
    for i, n in enumerate(sizes):
        left.send(1, TAG, bytes([i % 251]) * n)
    for i, n in enumerate(sizes):
        assert right.recv(0, TAG) == bytes([i % 251]) * n
    left.close(0.1)
    right.close(0.1)


def test_two_parties_sending_large_frames_at_once_do_not_deadlock() -> None:
    """Both sides send 64 MB before either reads: far beyond the kernel's buffers, so a
    blocking ``sendall`` on each side would wait forever for the other to read."""
    left, right = _pair(timeout=60)
    payload = {0: b"\x01" * (64 << 20), 1: b"\x02" * (64 << 20)}
    got: dict[int, bytes] = {}

    def party(me: int, links: Links, peer: int) -> None:
        links.send(peer, TAG, payload[me])
        got[me] = bytes(links.recv(peer, TAG))

    threads = [
        threading.Thread(target=party, args=(0, left, 1)),
        threading.Thread(target=party, args=(1, right, 0)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == {0: payload[1], 1: payload[0]}


def test_a_peer_that_closes_is_reported_by_name_after_its_last_frame() -> None:
    left, right = _pair()
    left.send(1, TAG, b"last words")
    left.close(0.1)
    assert right.recv(0, TAG) == b"last words"  # sent before the close: still delivered
    with pytest.raises(ChannelError, match="a closed the connection"):
        right.recv(0, TAG)


def test_a_silent_peer_times_out_and_a_desynchronised_one_is_named() -> None:
    left, right = _pair(timeout=0.5)
    with pytest.raises(ChannelError, match=r"timed out after 0 s waiting for b|timed out"):
        left.recv(1, TAG)
    right.send(0, 2, b"an object where a tensor was expected")
    with pytest.raises(ChannelError, match="b sent a frame of kind 2, expected 1"):
        left.recv(1, TAG)
