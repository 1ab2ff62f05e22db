"""Exceptions of the secure aggregation protocol."""

from __future__ import annotations


class SecAggError(Exception):
    """Base class: the protocol refused a message or could not complete a round."""


class RoundAbandoned(SecAggError):
    """Fewer than the threshold of sites remain; nothing about anyone is revealed."""


class ShareIntegrityError(SecAggError):
    """A ciphertext failed authentication (tampered, replayed or misaddressed)."""

    def __init__(self, sender: str, recipient: str, reason: str) -> None:
        super().__init__(f"ciphertext from site {sender!r} to {recipient!r} rejected: {reason}")
        self.sender = sender


class ProtocolViolation(SecAggError):
    """A message arrived out of order, twice, or from a site not in the round."""


class ConsistencyError(ProtocolViolation):
    """The server told the sites of one round different things: another model or config
    (digest), another survivor list, or signatures that do not verify. The site abandons
    the round and releases nothing."""
