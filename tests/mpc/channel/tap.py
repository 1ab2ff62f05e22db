"""A tapping proxy: forwards TCP connections to a target and records every byte.

It sits where an eavesdropper on the network between two organisations would: every
connection to its port is relayed to the target, and each direction's bytes are kept.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from mpc.channel import tls
from mpc.parties import free_port


class Tap:
    """Relay ``127.0.0.1:<port>`` to ``target``; ``streams`` holds each direction's bytes.

    ``intercept`` (a man in the middle) replaces the relay: it is handed each accepted
    connection and does with it what it likes.
    """

    def __init__(
        self, target: tuple[str, int], intercept: Callable[[socket.socket], None] | None = None
    ) -> None:
        self.target, self.intercept = target, intercept
        self.server = socket.create_server(("127.0.0.1", free_port()))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.streams: list[bytearray] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return  # closed
            if self.intercept is not None:
                threading.Thread(target=self.intercept, args=(client,), daemon=True).start()
                continue
            upstream = tls.dial(self.target, 60.0)  # the target may still be starting
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                record = bytearray()
                with self._lock:
                    self.streams.append(record)
                threading.Thread(target=_relay, args=(src, dst, record), daemon=True).start()

    def recording(self) -> bytes:
        with self._lock:
            return b"".join(bytes(s) for s in self.streams)

    def close(self) -> None:
        self.server.close()


def _relay(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
    # One side going away ends this direction's relay; the other may already be closed.
    with contextlib.suppress(OSError):
        while chunk := src.recv(1 << 16):
            record.extend(chunk)
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def tls_payloads(stream: bytes) -> bytes:
    """The payload of every TLS record in ``stream`` (a TLS connection's one direction):
    what an eavesdropper sees once the record headers are taken off."""
    out, i = bytearray(), 0
    while i + 5 <= len(stream):
        length = int.from_bytes(stream[i + 3 : i + 5], "big")
        if stream[i] == 23:  # application data: everything after the hellos in TLS 1.3
            out += stream[i + 5 : i + 5 + length]
        i += 5 + length
    return bytes(out)
