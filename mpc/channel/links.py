"""Framed, full-duplex links between the parties of one session, in one thread.

Each link is one connected socket (TLS in a session; plain only with ``--insecure``). A
frame is a tag byte, an 8-byte length and the payload. Frames to a peer arrive in the
order they were sent, which is all the ordering the MPC protocol needs: both parties run
the same sequence of sends and receives.

Why one thread with non-blocking sockets: two parties that send each other a large share
at the same time (every ``all_reduce``) would both block in ``sendall`` once the kernel
buffers fill. The pump below reads whatever arrives while it writes, so neither side
waits on the other. An ``SSLSocket`` must not be read and written by two threads at once,
which rules out a reader thread per link.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable

_HEADER = struct.Struct("!BQ")
#: Largest frame accepted: a share of a batch of 224-px images is well below it.
MAX_FRAME_BYTES = 1 << 34
_CHUNK = 1 << 20
#: Frames up to this size are copied behind their header and written in one piece.
_SMALL = 1 << 16


class ChannelError(ConnectionError):
    """A peer closed, sent a malformed frame, or did not answer in time."""


class Link:
    """One peer's connection: outgoing bytes not yet written, incoming frames not yet read."""

    def __init__(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        # The protocol is many short round trips: Nagle's algorithm would hold each small
        # frame back until the previous one is acknowledged.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.peer = sock, peer
        self.out: deque[memoryview] = deque()
        self.frames: deque[tuple[int, bytearray]] = deque()
        self._header = bytearray(_HEADER.size)
        self._body: bytearray | None = None
        self._tag = 0
        self._filled = 0
        self.bytes_sent = self.bytes_received = 0
        self.ended = False  # the peer closed its end; frames already read stay readable
        self.watched = 0  # the selector events registered for this socket

    def queue(self, tag: int, payload: bytes | bytearray | memoryview) -> None:
        view = memoryview(payload).cast("B")
        header = _HEADER.pack(tag, view.nbytes)
        if view.nbytes <= _SMALL:  # one write, one TLS record, one packet
            self.out.append(memoryview(header + view.tobytes()))
            return
        self.out.append(memoryview(header))
        self.out.append(view)

    def write(self) -> bool:
        """Write what the socket takes now; True if anything was written."""
        wrote = False
        while self.out:
            try:
                n = self.sock.send(self.out[0][:_CHUNK])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return wrote
            except OSError as err:
                raise _lost(self.peer, "sending to", err) from err
            wrote = True
            self.bytes_sent += n
            if n == self.out[0].nbytes:
                self.out.popleft()
            else:
                self.out[0] = self.out[0][n:]
        return wrote

    def read(self) -> bool:
        """Read what has arrived into frames; True if anything was read."""
        got = False
        while not self.ended:
            target = self._target()
            try:
                n = self.sock.recv_into(target)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return got
            except OSError as err:
                raise _lost(self.peer, "receiving from", err) from err
            if n == 0:
                self.ended = True
                return got
            got = True
            self.bytes_received += n
            self._filled += n
            self._advance()
        return got

    def _target(self) -> memoryview:
        if self._body is None:
            return memoryview(self._header)[self._filled :]
        return memoryview(self._body)[self._filled :]

    def _advance(self) -> None:
        if self._body is None and self._filled == _HEADER.size:
            self._tag, size = _HEADER.unpack(self._header)
            if size > MAX_FRAME_BYTES:
                raise ChannelError(f"{self.peer} announced a frame of {size} bytes")
            self._body, self._filled = bytearray(size), 0
        if self._body is not None and self._filled == len(self._body):
            self.frames.append((self._tag, self._body))
            self._body, self._filled = None, 0


class Links:
    """The links of one party to each of its peers, keyed by peer rank."""

    def __init__(self, links: dict[int, Link], timeout: float) -> None:
        self.links, self.timeout = links, timeout
        self._selector = selectors.DefaultSelector()

    def send(self, peer: int, tag: int, payload: bytes | bytearray | memoryview) -> None:
        """Send one frame; returns once the socket has taken all of it."""
        link = self.links[peer]
        link.queue(tag, payload)
        self._pump(lambda: not link.out, link, "sending to")

    def recv(self, peer: int, tag: int) -> bytearray:
        """The next frame from ``peer``; a frame of another kind is a desynchronised peer."""
        link = self.links[peer]
        self._pump(lambda: bool(link.frames), link, "waiting for")
        got, body = link.frames.popleft()
        if got != tag:
            raise ChannelError(f"{link.peer} sent a frame of kind {got}, expected {tag}")
        return body

    def _pump(self, done: Callable[[], bool], target: Link | None, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            progressed = False
            for link in self.links.values():
                progressed |= link.write()
                progressed |= link.read()
            if done() or progressed:
                continue
            if target is not None and target.ended:
                raise ChannelError(f"{target.peer} closed the connection ({what} it)")
            self._wait(deadline, f"{what} {target.peer if target else 'every peer'}")

    def _wait(self, deadline: float, what: str) -> None:
        """Sleep until a socket can make progress; a peer that has ended is not watched."""
        for link in self.links.values():
            events = 0 if link.ended else selectors.EVENT_READ
            events |= selectors.EVENT_WRITE if link.out else 0
            if events != link.watched:  # the selector is told only of changes
                if not link.watched:
                    self._selector.register(link.sock, events, link)
                elif events:
                    self._selector.modify(link.sock, events, link)
                else:
                    self._selector.unregister(link.sock)
                link.watched = events
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChannelError(f"timed out after {self.timeout:.0f} s {what}")
        if self._selector.get_map():
            self._selector.select(timeout=left)
        else:
            time.sleep(min(left, 0.05))

    def close(self, linger: float = 5.0) -> None:
        """End every link in order: flush, half-close, wait for the peer's end, close.

        Why not a bare close: a socket closed with unread data makes the kernel reset the
        connection, and the peer can lose the last frame it had not read yet.
        """
        try:
            self._pump(lambda: all(not link.out for link in self.links.values()), None, "flushing")
        finally:
            for link in self.links.values():
                _linger_close(link.sock, linger)
            self._selector.close()

    def stats(self) -> dict[str, int]:
        """Bytes on the wire (headers, and TLS records' payload) sent and received."""
        return {
            "bytes_sent": sum(link.bytes_sent for link in self.links.values()),
            "bytes_received": sum(link.bytes_received for link in self.links.values()),
        }


#: How a peer that went away shows: a reset, a broken pipe, TLS cut without close_notify.
_GONE = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)


def _lost(peer: str, what: str, err: OSError) -> ChannelError:
    if isinstance(err, _GONE):
        return ChannelError(f"{peer} closed the connection ({err})")
    return ChannelError(f"{what} {peer} failed: {err}")


def _linger_close(sock: socket.socket, linger: float) -> None:
    deadline = time.monotonic() + linger
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.setblocking(True)
            sock.settimeout(linger)
            sock = sock.unwrap()  # close_notify both ways: the peer's data is all read
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(max(0.0, deadline - time.monotonic()))
        while sock.recv(_CHUNK):
            pass
    except (OSError, ValueError):
        pass  # the peer went first or is gone: nothing of ours is left unsent
    finally:
        sock.close()
