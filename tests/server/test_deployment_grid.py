"""The deployed ServerApp's grid: every reply collected with short waits between looks, and
each multi-array record sent packed, restored intact by the site's ClientApp."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.transport import unpack_mod, unpacked_content
from mpc.secagg.work import work_digest
from server.deployment_grid import DeploymentGrid, packed, packed_content
from task.federation.transport import LAYOUTS, PACKED


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


class SlowSites:
    """A grid whose replies arrive one per pull, after ``delay`` pulls."""

    def __init__(self, delay: int) -> None:
        self.delay, self.pulls, self.answered, self.pushed = delay, [], [], []

    def push_messages(self, messages):
        self.pushed.extend(messages)
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls.append(time.monotonic())
        if len(self.pulls) <= self.delay:
            return []
        mid = sorted(ids)[0]
        self.answered.append(mid)
        return [types.SimpleNamespace(metadata=types.SimpleNamespace(reply_to_message_id=mid))]

    def get_node_ids(self):
        return [1, 2, 3]


def _model_content() -> RecordDict:
    rng = np.random.default_rng(0)
    arrays = {
        "conv.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "fc.bias": rng.normal(size=(2,)).astype(np.float64),
    }
    return RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "config": ConfigRecord({"server-round": 3, "lr": 0.1}),
        }
    )


def _message(content: RecordDict, node: int = 1) -> Message:
    return Message(content=content, dst_node_id=node, message_type="train", group_id="3")


def test_every_reply_is_collected_with_short_waits_between_looks() -> None:
    sites = SlowSites(delay=2)
    grid = DeploymentGrid(sites, interval=0.05)
    messages = [_message(RecordDict({"config": ConfigRecord({"x": i})})) for i in range(3)]
    replies = list(grid.send_and_receive(messages, timeout=None))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    gaps = [b - a for a, b in zip(sites.pulls, sites.pulls[1:], strict=False)]
    assert len(sites.pulls) == 5 and all(0.04 <= g < 1.0 for g in gaps)  # Flower's waits 3 s
    assert grid.get_node_ids() == [1, 2, 3]  # everything else is the grid's own


def test_a_timeout_returns_what_came() -> None:
    sites = SlowSites(delay=10**6)
    t0 = time.monotonic()
    grid = DeploymentGrid(sites, interval=0.05)
    assert list(grid.send_and_receive([_message(RecordDict())], timeout=0.3)) == []
    assert time.monotonic() - t0 < 1.0


def test_a_model_travels_as_one_array_and_arrives_as_the_strategy_made_it() -> None:
    content = _model_content()
    sites = SlowSites(delay=0)
    DeploymentGrid(sites).push_messages([_message(content, 1), _message(content, 2)])
    sent = [m.content for m in sites.pushed]
    assert sent[0] is sent[1]  # packed once for both sites
    assert list(sent[0]["arrays"]) == [PACKED] and LAYOUTS in sent[0].config_records
    assert [m.metadata.dst_node_id for m in sites.pushed] == [1, 2]
    assert {m.metadata.group_id for m in sites.pushed} == {"3"}

    restored = unpacked_content(sent[0])
    assert list(restored["arrays"]) == list(content["arrays"])  # order kept
    for key, array in content["arrays"].items():
        got = restored["arrays"][key]
        assert (got.dtype, got.shape, got.stype) == (array.dtype, array.shape, array.stype)
        np.testing.assert_array_equal(got.numpy(), array.numpy())
    # The secure-aggregation commitment hashes alike at both ends.
    assert work_digest(restored) == work_digest(content)
    assert LAYOUTS not in restored.config_records


def test_the_sites_mod_restores_the_message_in_place_before_the_handler() -> None:
    content = _model_content()
    (msg,) = packed([_message(content)])
    seen = {}

    def handler(m: Message, _context) -> Message:
        seen["keys"] = list(m.content["arrays"])
        return m

    assert unpack_mod(msg, None, handler) is msg  # same message: the reply answers it
    assert seen["keys"] == list(content["arrays"])


def test_records_of_one_array_and_messages_without_arrays_are_left_alone() -> None:
    one = RecordDict({"masked": ArrayRecord({"masked": Array(np.zeros(3, np.uint64))})})
    assert packed_content(one) is one
    assert unpacked_content(one) is one


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c["packed-layouts"].__setitem__("arrays", "[1, 2]"),
        lambda c: c["packed-layouts"].__setitem__("arrays", "not json"),
        lambda c: c["packed-layouts"].__setitem__("other", "[]"),
        lambda c: c["arrays"].__setitem__(PACKED, Array(np.zeros(3, np.uint8))),
    ],
    ids=["bad-entries", "not-json", "missing-record", "short-buffer"],
)
def test_a_malformed_packed_record_is_refused_naming_it(tamper) -> None:
    content = packed_content(_model_content())
    tamper(content)
    with pytest.raises(ValueError, match=r"packed record '(arrays|other)'"):
        unpacked_content(content)
