"""Secure aggregation on the Message API, end to end in one process.

A small in-process grid hands each message to a real ClientApp (real data, real local
training, the real secure mod) with one Context per node, and can make a node vanish at any
protocol stage or tamper with what it relays. The Flower runtime itself is exercised by the
slow simulation and deployment tests.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg, FedMedian
from hydra.utils import instantiate
from scipy import stats

from client.client_app import make_client_app
from mpc.secagg import wire
from mpc.secagg.identity import write_identities
from strategies.checkpointed import CheckpointedStrategy
from strategies.metrics import pooled_evaluate_metrics
from strategies.secure import SecureAggregation
from task.config import compose_config
from task.models.factory import build_model
from tests.inprocess_grid import InProcessGrid, masks_off, record_masking

BASE = [
    "data.limit=240",
    "federation.local_steps=3",
    "train.batch_size=16",
    "model=small_cnn",
    "model.channels=[4,8,8,8]",
    "logger=none",
]


@pytest.fixture(scope="module")
def roster(tmp_path_factory):
    return write_identities(tmp_path_factory.mktemp("ids"), [f"site-{i}" for i in range(3)])


def _setup(roster, secure: str, *extra: str, **grid_args):
    overrides = [*BASE, f"secure={secure}", *extra]
    if secure == "smpc":
        overrides.append(f"secure.roster={roster}")
    cfg = compose_config(overrides)
    strategy = instantiate(cfg.secure)(instantiate(cfg.strategy))
    model = build_model(cfg.model, (1, 28, 28), 2)
    return (
        strategy,
        InProcessGrid(make_client_app(overrides), **grid_args),
        ArrayRecord(model.state_dict()),
    )


def _train_round(strategy, grid, arrays):
    messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
    return strategy.aggregate_train(1, grid.send_and_receive(list(messages)))


def _evaluate_round(strategy, grid, arrays):
    messages = strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)
    return strategy.aggregate_evaluate(1, grid.send_and_receive(list(messages)))


def _uniform_bytes_p(values: np.ndarray) -> float:
    counts = np.bincount(np.asarray(values, dtype=np.uint64).view(np.uint8), minlength=256)
    return stats.chisquare(counts).pvalue


def test_secure_aggregate_equals_plaintext_fedavg_on_real_updates(roster, monkeypatch):
    secure, grid, arrays = _setup(roster, "smpc")
    plain, plain_grid, _ = _setup(roster, "none")
    calls = record_masking(monkeypatch)
    got, metrics = _train_round(secure, grid, arrays)
    want, plain_metrics = _train_round(plain, plain_grid, arrays)
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=0, atol=1e-6)
    assert metrics["num-examples"] == 3 * 3 * 16  # 3 sites x 3 steps x batch 16
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"], abs=1e-6)
    assert metrics["secure-sites"] == 3
    # The server received masked vectors only: each is what its site sent, no value of it
    # equals the site's plaintext encoding, and its bytes are uniform (the plaintext's are
    # not: the control).
    received = [p for st, _, p in secure.transcripts[-1].transcript if st == "mask"]
    assert len(received) == len(calls) == 3
    for (_, plain_vector, sent), got_vector in zip(calls, received, strict=True):
        assert np.array_equal(sent, got_vector)
        assert not np.any(got_vector == plain_vector)
        assert _uniform_bytes_p(got_vector) > 1e-4
        assert _uniform_bytes_p(plain_vector) < 1e-10


def test_without_masks_the_server_would_see_each_update(roster, monkeypatch):
    """The control of the test above: with every mask zero the round still sums right,
    and what the server received is each site's plaintext encoding."""
    secure, grid, arrays = _setup(roster, "smpc")
    calls = record_masking(monkeypatch)
    masks_off(monkeypatch)
    got, _ = _train_round(secure, grid, arrays)
    assert got is not None
    received = [p for st, _, p in secure.transcripts[-1].transcript if st == "mask"]
    assert all(np.array_equal(r, plain) for (_, plain, _), r in zip(calls, received, strict=True))
    assert all(_uniform_bytes_p(r) < 1e-10 for r in received)


def test_secure_evaluation_reveals_only_federation_totals(roster):
    secure, grid, arrays = _setup(roster, "smpc")
    plain, plain_grid, _ = _setup(roster, "none")
    secure_replies = grid.send_and_receive(
        list(secure.configure_evaluate(1, arrays, ConfigRecord(), grid))
    )
    # Each reply is one masked vector: no metric crosses in the clear (no site allowed it).
    assert all(not r.content.metric_records for r in secure_replies)
    assert all(wire.MASKED in r.content.array_records for r in secure_replies)
    got = secure.aggregate_evaluate(1, secure_replies)
    replies = plain_grid.send_and_receive(
        list(plain.configure_evaluate(1, arrays, ConfigRecord(), plain_grid))
    )
    want = pooled_evaluate_metrics([r.content for r in replies], "num-examples")
    assert list(got["confusion"]) == list(want["confusion"])
    assert got["mcc"] == pytest.approx(want["mcc"])
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
    assert 0.0 <= got["auc"] <= 1.0


def test_the_next_rounds_keys_ride_on_the_unmask_reply(roster):
    """A secure round costs each site 8 messages, not 10: after the first, the round keys
    of the next exchange come with the unmask shares, so no advertise message is sent.
    A strategy that lost them (a restarted ServerApp) asks again, and the round runs."""
    secure, grid, arrays = _setup(roster, "smpc")
    trained, _ = secure.aggregate_train(
        1, grid.send_and_receive(list(secure.configure_train(1, arrays, ConfigRecord(), grid)))
    )
    assert trained is not None
    first, grid.delivered = Counter(grid.delivered), []
    evaluated = secure.aggregate_evaluate(
        1, grid.send_and_receive(list(secure.configure_evaluate(1, arrays, ConfigRecord(), grid)))
    )
    again, _ = secure.aggregate_train(
        2, grid.send_and_receive(list(secure.configure_train(2, arrays, ConfigRecord(), grid)))
    )
    assert evaluated["secure-sites"] == 3 and again is not None
    assert first == dict.fromkeys(InProcessGrid.STAGES, 3)
    later = dict.fromkeys(["share", "mask", "consistency", "unmask"], 6)
    assert Counter(grid.delivered) == later  # evaluation 1 and training 2: no advertise
    restarted = instantiate(
        compose_config([*BASE, "secure=smpc", f"secure.roster={roster}"]).secure
    )(secure.inner)
    grid.delivered = []
    replies = grid.send_and_receive(
        list(restarted.configure_evaluate(2, arrays, ConfigRecord(), grid))
    )
    assert restarted.aggregate_evaluate(2, replies)["secure-sites"] == 3
    assert Counter(grid.delivered)["advertise"] == 3


def test_a_site_that_declines_sends_nothing_in_the_clear_and_is_filed(roster, tmp_path):
    """Under secure aggregation a site whose privacy budget cannot pay for the round
    answers with its reason only: no update or count leaves it, masked or in the clear,
    and the coordinator files the decline by its code (not by an error's words)."""
    secure, grid, arrays = _setup(
        roster,
        "smpc",
        "privacy=local_dp",
        "privacy.noise_multiplier=1.0",
        "privacy.epsilon=0.01",
    )
    for node, context in grid.contexts.items():  # each site its own ledger and log
        context.node_config["state-dir"] = str(tmp_path / str(node))
    cfg = compose_config([*BASE, "privacy=local_dp"])
    # DP-SGD trains Opacus's version of the network (GroupNorm for BatchNorm).
    arrays = ArrayRecord(build_model(cfg.model, (1, 28, 28), 2, dp_compatible=True).state_dict())
    wrapped = CheckpointedStrategy(secure)
    replies = grid.send_and_receive(list(wrapped.configure_train(1, arrays, ConfigRecord(), grid)))
    assert len(replies) == 3 and not any(r.has_error() for r in replies)
    assert all(not r.content.array_records and not r.content.metric_records for r in replies)
    assert wrapped.aggregate_train(1, replies) == (None, None)  # nothing to unmask
    record = wrapped._current(1)
    assert record.declined == dict.fromkeys(["site-0", "site-1", "site-2"], "privacy-budget")
    assert record.failures["train"] == 0


@pytest.mark.parametrize("stage", InProcessGrid.STAGES)
def test_a_site_vanishing_at_any_stage_leaves_the_round_complete(roster, stage):
    # A cohort of two is below the default secure.min_cohort (next test): allowed here.
    strategy, grid, arrays = _setup(roster, "smpc", "secure.min_cohort=2", drop={102: stage})
    got, metrics = _train_round(strategy, grid, arrays)
    # After masking, the vanished site's update is in the sum: it was sent already.
    survivors = {101, 102, 103} if stage in ("consistency", "unmask") else {101, 103}
    assert metrics["secure-sites"] == len(survivors)
    # The result is the plaintext FedAvg of exactly those sites' updates.
    plain, plain_grid, _ = _setup(roster, "none")
    replies = plain_grid.send_and_receive(
        list(plain.configure_train(1, arrays, ConfigRecord(), plain_grid))
    )
    want, _ = plain.aggregate_train(1, [r for r in replies if r.metadata.src_node_id in survivors])
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=0, atol=1e-6)


def test_a_cohort_below_min_cohort_is_refused_by_the_sites(roster, caplog):
    """Two sites advertise: by default (min_cohort 3) the sites refuse the cohort, even
    from a server that goes on with it, and nothing is revealed."""
    strategy, grid, arrays = _setup(roster, "smpc", drop={102: "advertise"})
    strategy.min_cohort = 2  # a server that would go on: the sites still refuse
    assert _train_round(strategy, grid, arrays) == (None, None)
    assert "below its min_cohort=3" in caplog.text
    assert not any(st == "mask" for st, _, _ in strategy.transcripts[-1].transcript)


def test_below_threshold_the_round_is_abandoned_and_the_next_one_runs(roster):
    strategy, grid, arrays = _setup(roster, "smpc", drop={102: "mask", 103: "mask"})
    assert _train_round(strategy, grid, arrays) == (None, None)
    assert not any(st == "unmask" for st, _, _ in strategy.transcripts[-1].transcript)
    grid.drop.clear()
    _, metrics = _train_round(strategy, grid, arrays)
    assert metrics["secure-sites"] == 3


def test_tampered_share_is_rejected_by_its_recipient_naming_the_sender(roster, caplog):
    def tamper(msg):
        record = msg.content.config_records.get(wire.RECORD)
        if msg.metadata.dst_node_id == 101 and record is not None and record["stage"] == "mask":
            blobs = list(record["blobs"])
            blobs[0] = blobs[0][:-1] + bytes([blobs[0][-1] ^ 1])
            record["blobs"] = blobs
        return msg

    strategy, grid, arrays = _setup(roster, "smpc", tamper=tamper)
    _, metrics = CheckpointedStrategy(strategy).aggregate_train(
        1, grid.send_and_receive(list(strategy.configure_train(1, arrays, ConfigRecord(), grid)))
    )
    assert metrics["secure-sites"] == 2  # site-0 refused to go on; the others finished
    assert "ciphertext from site 'site-1' to 'site-0' rejected" in caplog.text


def test_a_secure_site_refuses_to_answer_in_the_clear(roster):
    _, grid, arrays = _setup(roster, "smpc")
    plain, _, _ = _setup(roster, "none")
    replies = grid.send_and_receive(list(plain.configure_train(1, arrays, ConfigRecord(), grid)))
    assert all(r.has_error() and "refusing to send" in r.error.reason for r in replies)


def test_robust_aggregators_are_refused(roster):
    with pytest.raises(ValueError, match="FedMedian needs the individual updates"):
        SecureAggregation(FedMedian(), roster=str(roster))
    with pytest.raises(ValueError, match=r"secure\.roster is null"):
        SecureAggregation(FedAvg(), roster=None)


def test_a_site_may_choose_to_share_its_own_metrics(roster):
    secure, grid, arrays = _setup(roster, "smpc")
    grid.contexts[101].node_config["share-site-metrics"] = True
    replies = grid.send_and_receive(
        list(secure.configure_evaluate(1, arrays, ConfigRecord(), grid))
    )
    shared = {r.metadata.src_node_id: r.content.metric_records for r in replies}
    assert set(shared[101][wire.SITE_METRICS]) == {"auc", "accuracy", "mcc"}
    assert not shared[102] and not shared[103]
    assert secure.aggregate_evaluate(1, replies)["secure-sites"] == 3
