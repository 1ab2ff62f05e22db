"""Fake Flower replies, built without a network (as Flower's own strategy tests do)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from task.constants import DECLINE_RECORD, SITE_RECORD


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def _request(node: int, kind: str = MessageType.TRAIN) -> Message:
    return Message(
        content=RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=kind
    )


def train_reply(node: int, site: str, weights: dict[str, np.ndarray], n: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
            "metrics": MetricRecord({"num-examples": n, "loss": 0.5}),
            SITE_RECORD: ConfigRecord({"name": site}),
        }
    )
    return Message(content=content, reply_to=_request(node))


def eval_reply(node: int, site: str, confusion: list[int], auc: float, loss: float) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "num-examples": sum(confusion),
                    "loss": loss,
                    "auc": auc,
                    "accuracy": 0.0,
                    "mcc": 0.0,
                    "confusion": confusion,
                }
            ),
            SITE_RECORD: ConfigRecord({"name": site}),
        }
    )
    return Message(content=content, reply_to=_request(node, MessageType.EVALUATE))


def error_reply(node: int) -> Message:
    return Message(Error(code=1, reason="site crashed"), reply_to=_request(node))


def declined_reply(node: int, site: str, reason: str = "privacy-budget") -> Message:
    """A site's answer that declines the round (as client.local sends for its budget)."""
    content = RecordDict(
        {
            DECLINE_RECORD: ConfigRecord({"reason": reason, "detail": f"site {site}: spent"}),
            SITE_RECORD: ConfigRecord({"name": site}),
        }
    )
    return Message(content=content, reply_to=_request(node))
