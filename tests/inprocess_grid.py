"""An in-process stand-in for Flower's Grid: each message goes to a real ClientApp in this
process, one Context per node, with optional vanishing and tampering (unit tests only; the
slow tests run Flower's own simulation and deployment runtimes)."""

from __future__ import annotations

import types

import numpy as np
from flwr.app import Context, Error, Message, RecordDict

from mpc.secagg import protocol, wire
from mpc.secagg.site import SiteSession

NODES = (101, 102, 103)


def _stage(msg: Message) -> str:
    record = msg.content.config_records.get(wire.RECORD)
    if msg.metadata.message_type == wire.MESSAGE_TYPE:
        return str(record["stage"])
    return "mask" if record is not None else "plain"


class InProcessGrid:
    """Delivers messages to ``app`` in this process; ``drop={node: stage}`` makes a node
    vanish from that stage on; ``tamper(msg)`` may alter a message before delivery."""

    STAGES = ("advertise", "share", "mask", "consistency", "unmask")

    def __init__(self, app, drop=None, tamper=None, nodes=NODES, node_config=None):
        self.app, self.drop, self.tamper = app, dict(drop or {}), tamper
        self.run = types.SimpleNamespace(run_id=7)
        #: The stage of every message delivered, in order (for counting messages).
        self.delivered: list[str] = []
        self.contexts = {
            node: Context(
                run_id=7,
                node_id=node,
                node_config={"partition-id": i, "num-partitions": len(nodes)}
                | dict(node_config or {}),
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(nodes)
        }

    def get_node_ids(self):
        return list(self.contexts)

    def _gone(self, node: int, stage: str) -> bool:
        at = self.drop.get(node)
        return (
            at is not None
            and stage in self.STAGES
            and (self.STAGES.index(stage) >= self.STAGES.index(at))
        )

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if self._gone(node, _stage(msg)):
                continue
            if self.tamper is not None:
                msg = self.tamper(msg)
            self.delivered.append(_stage(msg))
            try:
                replies.append(self.app(msg, self.contexts[node]))
            except Exception as err:  # what Flower's runtime turns into an error reply
                replies.append(
                    Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
                )
        return replies


def record_masking(monkeypatch) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Spy on every site's masking: ``(site, plaintext vector, what it sent)`` per call,
    so a test can compare what the server received with what the site would have sent
    in the clear."""
    calls: list[tuple[str, np.ndarray, np.ndarray]] = []
    real = SiteSession.masked_input

    def spy(self, x):
        y = real(self, x)
        calls.append((self.name, np.array(x, dtype=np.uint64), np.array(y)))
        return y

    monkeypatch.setattr(SiteSession, "masked_input", spy)
    return calls


def masks_off(monkeypatch) -> None:
    """The negative control: every mask is zero, so a site sends its plaintext encoding."""
    monkeypatch.setattr(
        protocol.crypto, "mask", lambda seed, length, info: np.zeros(length, dtype=np.uint64)
    )
