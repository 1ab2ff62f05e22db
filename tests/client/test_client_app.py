"""The ClientApp's handlers, called with real Flower records (no network)."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.client_app import make_client_app
from client.local import _network
from task.config import compose_config
from task.constants import DECLINE_RECORD, SITE_RECORD
from task.data.sites import load_site
from task.models.factory import build_model
from task.privacy.ledger import LEDGER_FILE
from task.privacy.settings import BUDGET_DECLINE

# The plaintext handlers; secure aggregation around them is tested in tests/strategies.
OVERRIDES = ["experiment=fed_quick", "secure=none"]


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def _message(kind: str, arrays: ArrayRecord) -> Message:
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, dst_node_id=5, message_type=kind)


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def test_train_returns_weights_true_example_count_and_site_name() -> None:
    cfg = compose_config(OVERRIDES)
    node = {"partition-id": 1, "num-partitions": 3}
    site = load_site(cfg, node)
    model = build_model(cfg.model, site.splits.in_shape, 2)
    app = make_client_app(OVERRIDES)
    reply = app(_message(MessageType.TRAIN, ArrayRecord(model.state_dict())), _context(node))
    assert not reply.has_error()
    assert reply.content["metrics"]["num-examples"] == len(site.splits.train)
    assert set(reply.content["metrics"]) == {"num-examples", "loss", "lr"}  # no DP: the loss too
    assert reply.content[SITE_RECORD]["name"] == "site-1"
    new = reply.content["arrays"].to_torch_state_dict()
    assert set(new) == set(model.state_dict())
    assert any(not (new[k] == v).all() for k, v in model.state_dict().items())

    reply = app(_message(MessageType.EVALUATE, ArrayRecord(model.state_dict())), _context(node))
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == len(site.splits.val) == sum(metrics["confusion"])


def test_sites_sharing_one_process_reuse_one_network_without_carrying_state() -> None:
    """Simulated sites share a process and one network, built once: each message loads its
    whole state, so a reply depends on the message and the site only."""
    cfg = compose_config(OVERRIDES)
    app = make_client_app(OVERRIDES)
    nodes = [{"partition-id": i, "num-partitions": 3} for i in (0, 2)]
    model = build_model(cfg.model, (1, 28, 28), 2)
    sent = ArrayRecord(model.state_dict())

    def train(node: dict) -> dict:
        reply = app(_message(MessageType.TRAIN, sent), _context(node))
        return reply.content["arrays"].to_torch_state_dict()

    hits = _network.cache_info().hits
    first = train(nodes[0])
    train(nodes[1])  # another site trains the shared network in between
    again = train(nodes[0])
    assert all((first[k] == again[k]).all() for k in first)  # seeded by round and site
    assert any(not (first[k] == v).all() for k, v in train(nodes[1]).items())
    assert _network.cache_info().hits >= hits + 3  # built at most once for all four


def test_site_without_data_fails_with_a_clear_error() -> None:
    """Flower's runtime turns this exception into an error reply (see tests/strategies)."""
    cfg = compose_config(OVERRIDES)
    model = build_model(cfg.model, (1, 28, 28), 2)
    app = make_client_app(OVERRIDES)
    with pytest.raises(ValueError, match="names no data: set 'data-path'"):
        app(
            _message(MessageType.TRAIN, ArrayRecord(model.state_dict())),
            _context({"site-name": "lost"}),
        )


def test_local_dp_site_reports_epsilon_keeps_its_ledger_and_enforces_its_budget(
    tmp_path,
) -> None:
    overrides = [*OVERRIDES, "privacy=local_dp", "federation.local_steps=2"]
    cfg = compose_config(overrides)
    node = {"partition-id": 0, "num-partitions": 3, "state-dir": str(tmp_path / "site-0")}
    site = load_site(cfg, node)
    model = build_model(cfg.model, site.splits.in_shape, 2, dp_compatible=True)
    app = make_client_app(overrides)
    eps = []
    for _ in range(2):  # each call loads the ledger from disk, as a restarted node would
        reply = app(_message(MessageType.TRAIN, ArrayRecord(model.state_dict())), _context(node))
        assert not reply.has_error()
        eps.append(reply.content[SITE_RECORD]["epsilon"])
        assert reply.content[SITE_RECORD]["dp-steps"] == 2 * len(eps)
        # the noise-free training loss is accounted by no mechanism: it is not sent
        assert set(reply.content["metrics"]) == {"num-examples", "lr"}
    assert 0 < eps[0] < eps[1] <= 3.0
    assert (tmp_path / "site-0" / LEDGER_FILE).is_file()

    sigma = reply.content[SITE_RECORD]["noise-multiplier"]
    # the same noise, with a budget the two rounds have just reached
    spent = [*overrides, f"privacy.noise_multiplier={sigma}", f"privacy.epsilon={eps[1]}"]
    declined = make_client_app(spent)(
        _message(MessageType.TRAIN, ArrayRecord(model.state_dict())), _context(node)
    )
    # An answer, not a failure: the reason travels as a field, and no update or count.
    assert not declined.has_error()
    record = declined.content.config_records[DECLINE_RECORD]
    assert record["reason"] == BUDGET_DECLINE
    assert "site site-0: privacy budget exhausted" in record["detail"]
    assert not declined.content.array_records and not declined.content.metric_records
    reply = make_client_app(spent)(
        _message(MessageType.EVALUATE, ArrayRecord(model.state_dict())), _context(node)
    )
    assert not reply.has_error() and reply.content["metrics"]["num-examples"] > 0


def test_a_local_dp_site_refuses_to_send_its_intensity_moments() -> None:
    """The control: the same query is answered without DP."""
    node = {"partition-id": 0, "num-partitions": 3}
    query = Message(content=RecordDict({}), dst_node_id=5, message_type="query.intensity")
    with pytest.raises(PermissionError, match="intensity moments without DP"):
        make_client_app([*OVERRIDES, "privacy=local_dp"])(query, _context(node))
    reply = make_client_app(OVERRIDES)(query, _context(node))
    assert reply.content["metrics"]["num-examples"] > 0
