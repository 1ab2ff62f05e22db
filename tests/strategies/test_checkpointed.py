"""The resumable wrapper: order-independent aggregation, records, failures, state."""

from __future__ import annotations

import types

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvg

from strategies.checkpointed import CheckpointedStrategy
from strategies.metrics import pooled_evaluate_metrics
from tests.strategies.conftest import declined_reply, error_reply, eval_reply, train_reply

RNG = np.random.default_rng(0)
SITES = {
    f"site-{i}": (
        {
            "w": RNG.normal(size=(5, 4)).astype(np.float32),
            "b": RNG.normal(size=4).astype(np.float32),
        },
        n,
    )
    for i, n in enumerate((100, 300, 50))
}


GLOBAL = {k: np.zeros_like(v) for k, v in SITES["site-0"][0].items()}


def _replies(order, nodes=(11, 22, 33)):
    return [train_reply(node, name, *SITES[name]) for node, name in zip(nodes, order, strict=True)]


def _configured(strategy: CheckpointedStrategy, server_round: int = 1) -> CheckpointedStrategy:
    """Run the round's ``configure_train`` (as ``Strategy.start`` does before aggregating),
    so that the wrapper knows the global model the replies are checked against."""
    grid = types.SimpleNamespace(get_node_ids=lambda: [11, 22, 33])
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
    return strategy


def test_fedavg_weights_by_examples_independent_of_reply_order() -> None:
    wrapped = _configured(CheckpointedStrategy(FedAvg()))
    a, _ = wrapped.aggregate_train(1, _replies(["site-0", "site-1", "site-2"]))
    b, _ = _configured(CheckpointedStrategy(FedAvg())).aggregate_train(
        1, _replies(["site-2", "site-0", "site-1"], nodes=(5, 9, 1))
    )
    total = sum(n for _, n in SITES.values())
    expected = sum(w["w"] * n for w, n in SITES.values()) / total
    np.testing.assert_allclose(a["w"].numpy(), expected, rtol=1e-6)
    assert np.array_equal(a["w"].numpy(), b["w"].numpy())  # bit-identical


def test_a_declining_site_is_recorded_by_its_reason_not_as_a_failure() -> None:
    """A site that declines (its privacy budget spent) answers: filed by its reason code,
    neither a failure nor a rejected update, and the others' updates are aggregated."""
    wrapped = _configured(CheckpointedStrategy(FedAvg()))
    replies = [*_replies(["site-0", "site-1", "site-2"])[:2], declined_reply(33, "site-2")]
    arrays, _ = wrapped.aggregate_train(1, replies)
    record = wrapped._current(1)
    assert record.declined == {"site-2": "privacy-budget"}
    assert record.failures["train"] == 0 and not record.rejected
    kept = {k: SITES[k] for k in ("site-0", "site-1")}
    expected = sum(w["w"] * n for w, n in kept.values()) / sum(n for _, n in kept.values())
    np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_failed_site_is_counted_and_round_goes_on() -> None:
    wrapped = _configured(CheckpointedStrategy(FedAvg(), start_round=4))
    replies = [*_replies(["site-0", "site-1", "site-2"])[:2], error_reply(44)]
    arrays, _ = wrapped.aggregate_train(1, replies)
    assert arrays is not None
    record = wrapped._current(1)
    assert record.round == 4  # true round after a resume at round 4
    assert record.failures["train"] == 1
    assert set(record.sites) == {"site-0", "site-1"}
    assert record.sites["site-1"]["train"]["num-examples"] == 300


def test_pooled_evaluation_mcc_is_federation_mcc() -> None:
    from sklearn.metrics import matthews_corrcoef

    # site confusions [[tn, fp], [fn, tp]] flattened
    confusions = {"site-0": [40, 10, 5, 45], "site-1": [5, 1, 20, 74], "site-2": [30, 0, 3, 7]}
    replies = [
        eval_reply(i, s, c, auc=0.9 + i / 100, loss=0.3)
        for i, (s, c) in enumerate(confusions.items())
    ]
    metrics = pooled_evaluate_metrics([r.content for r in replies], "num-examples")
    y_true, y_pred = [], []
    for c in confusions.values():
        for (t, p), count in zip([(0, 0), (0, 1), (1, 0), (1, 1)], c, strict=True):
            y_true += [t] * count
            y_pred += [p] * count
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred))
    assert metrics["num-examples"] == len(y_true)
    assert metrics["confusion"] == list(np.sum(list(confusions.values()), axis=0))


def test_fedadam_state_roundtrip() -> None:
    a = _configured(CheckpointedStrategy(FedAdam(eta=0.1, eta_l=0.1)))
    a.aggregate_train(1, _replies(["site-0", "site-1", "site-2"]))
    state = a.state_dict()
    assert {"m_t", "v_t", "current_arrays"} <= set(state)
    b = CheckpointedStrategy(FedAdam(eta=0.1, eta_l=0.1))
    b.load_state_dict(state)
    for attr in ("m_t", "v_t"):
        for k in getattr(a.inner, attr):
            assert np.array_equal(getattr(a.inner, attr)[k], getattr(b.inner, attr)[k])
    with pytest.raises(ValueError, match="bogus"):
        b.load_state_dict({"bogus": {}})


def _bad(kind: str) -> dict[str, np.ndarray]:
    weights = {k: v.copy() for k, v in SITES["site-1"][0].items()}
    if kind == "nan":
        weights["w"][2, 1] = np.nan
    elif kind == "inf":
        weights["b"][0] = np.inf
    elif kind == "shape":
        weights["w"] = weights["w"][:4]
    elif kind == "dtype":
        weights["b"] = weights["b"].astype(np.float64)
    elif kind == "extra":
        weights["trigger"] = np.ones(3, dtype=np.float32)
    elif kind == "missing":
        del weights["b"]
    elif kind == "norm":
        weights["w"] = weights["w"] * 100
    return weights


BAD_KINDS = {
    "nan": "tensor 'w' holds 1 non-finite value(s) (first: nan at index (2, 1))",
    "inf": "tensor 'b' holds 1 non-finite value(s) (first: inf at index (0,))",
    "shape": "tensor 'w' has shape (4, 4), expected (5, 4)",
    "dtype": "tensor 'b' has dtype float64, expected float32",
    "extra": "tensors differ from the global model's: extra 'trigger'",
    "missing": "tensors differ from the global model's: missing 'b'",
    "norm": "exceeds federation.max_update_norm=20",
}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_a_bad_update_is_rejected_and_the_others_are_averaged(kind, caplog) -> None:
    # Honest updates here have norm < 8 (normal draws from a zero global model).
    wrapped = _configured(CheckpointedStrategy(FedAvg(), max_update_norm=20.0))
    replies = [
        train_reply(11, "site-0", *SITES["site-0"]),
        train_reply(22, "site-1", _bad(kind), SITES["site-1"][1]),
        train_reply(33, "site-2", *SITES["site-2"]),
    ]
    arrays, _ = wrapped.aggregate_train(1, replies)
    good = [SITES["site-0"], SITES["site-2"]]
    total = sum(n for _, n in good)
    for key in ("w", "b"):
        expected = sum(w[key].astype(np.float64) * n for w, n in good) / total
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-6)
    record = wrapped._current(1)
    assert set(record.rejected) == {"site-1"}
    assert BAD_KINDS[kind] in record.rejected["site-1"]
    assert record.to_dict()["rejected"] == record.rejected  # goes into history.json
    assert record.failures["train"] == 0  # a rejection is not a crash at the site
    assert set(record.sites) == {"site-0", "site-2"}  # its metrics are not recorded
    # The accepted sites' update norms (global model is zero here) are in the history.
    norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in good[0][0].values()))
    assert record.sites["site-0"]["train"]["update-norm"] == pytest.approx(norm)
    assert "node 22 refused before aggregation" in caplog.text


@pytest.mark.parametrize("count", [0, -300, float("nan")])
def test_a_false_example_count_is_rejected(count) -> None:
    wrapped = _configured(CheckpointedStrategy(FedAvg()))
    replies = _replies(["site-0", "site-1", "site-2"])
    replies[1] = train_reply(22, "site-1", SITES["site-1"][0], count)
    arrays, _ = wrapped.aggregate_train(1, replies)
    assert "num-examples" in wrapped._current(1).rejected["site-1"]
    expected = (SITES["site-0"][0]["b"] * 100 + SITES["site-2"][0]["b"] * 50) / 150
    np.testing.assert_allclose(arrays["b"].numpy(), expected, rtol=1e-6)


def test_an_odd_metric_is_rejected_instead_of_failing_the_round() -> None:
    """Flower's FedAvg refuses a round whose replies name different metrics: the odd one
    is dropped before it gets there."""
    wrapped = _configured(CheckpointedStrategy(FedAvg()))
    replies = _replies(["site-0", "site-1", "site-2"])
    replies[2].content["metrics"]["extra"] = 1.0
    arrays, _ = wrapped.aggregate_train(1, replies)
    assert arrays is not None
    assert (
        "metrics differ from the other sites': extra 'extra'"
        in (wrapped._current(1).rejected["site-2"])
    )


def test_when_every_update_is_bad_the_round_aggregates_nothing_and_goes_on() -> None:
    wrapped = _configured(CheckpointedStrategy(FedAvg()))
    replies = [train_reply(n, f"site-{i}", _bad("nan"), 10) for i, n in enumerate((1, 2))]
    assert wrapped.aggregate_train(1, [*replies, error_reply(3)]) == (None, None)
    record = wrapped._current(1)
    assert set(record.rejected) == {"site-0", "site-1"} and record.failures["train"] == 1
    # The next round starts a fresh record.
    _configured(wrapped, server_round=2)
    arrays, _ = wrapped.aggregate_train(2, _replies(["site-0", "site-1", "site-2"]))
    assert arrays is not None and wrapped._current(2).rejected == {}


def test_checking_needs_the_global_model_of_the_round() -> None:
    with pytest.raises(RuntimeError, match="before configure_train"):
        CheckpointedStrategy(FedAvg()).aggregate_train(1, _replies(["site-0", "site-1", "site-2"]))


@pytest.mark.parametrize("bound", [-1.0, 0, float("nan")])
def test_a_bad_bound_fails_at_construction_naming_it(bound) -> None:
    with pytest.raises(ValueError, match=r"federation\.max_update_norm"):
        CheckpointedStrategy(FedAvg(), max_update_norm=bound)


def test_the_global_model_keeps_integer_counters_round_after_round() -> None:
    """Flower's FedAvg turns int64 counters into float64; the sites send int64 back, so a
    drifted global model would make the dtype check refuse every site from round 2 on."""
    weights = {"w": np.ones(3, dtype=np.float32), "steps": np.array(4, dtype=np.int64)}
    wrapped = CheckpointedStrategy(FedAvg())
    arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    grid = types.SimpleNamespace(get_node_ids=lambda: [11, 22, 33])
    for server_round in (1, 2, 3):
        wrapped.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = [
            train_reply(11, "site-0", {"w": weights["w"] * 2, "steps": np.array(9)}, 1),
            train_reply(22, "site-1", {"w": weights["w"] * 4, "steps": np.array(10)}, 2),
        ]
        arrays, _ = wrapped.aggregate_train(server_round, replies)
        assert wrapped._current(server_round).rejected == {}
        assert arrays["steps"].numpy().dtype == np.int64
        assert int(arrays["steps"].numpy()) == 10  # rint((9 + 2 * 10) / 3) = rint(9.67)
        assert arrays["w"].numpy().dtype == np.float32


def _aggregate_round(strategy: CheckpointedStrategy, server_round: int, scale: float):
    _configured(strategy, server_round)
    replies = [
        train_reply(node, name, {k: v * scale for k, v in SITES[name][0].items()}, SITES[name][1])
        for node, name in zip((11, 22, 33), SITES, strict=True)
    ]
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return {k: a.numpy() for k, a in arrays.items()}


def test_sites_validate_the_moving_average_and_training_goes_on_from_the_aggregate() -> None:
    strategy = CheckpointedStrategy(FedAvg(), ema_decay=0.7)
    first = _aggregate_round(strategy, 1, 1.0)
    second = _aggregate_round(strategy, 2, 3.0)
    d = 3 / 12  # the warm-up's decay after round 2
    expected = {k: d * first[k] + (1 - d) * second[k] for k in first}
    grid = types.SimpleNamespace(get_node_ids=lambda: [11, 22, 33])
    aggregate = ArrayRecord({k: Array(v) for k, v in second.items()})
    sent = list(strategy.configure_evaluate(2, aggregate, ConfigRecord(), grid))
    assert len(sent) == 3
    for msg in sent:
        for key, array in msg.content["arrays"].items():
            assert array.numpy().dtype == np.float32
            np.testing.assert_allclose(array.numpy(), expected[key], rtol=1e-6)
    # what the next round trains from stays the plain aggregate
    assert not np.allclose(second["w"], expected["w"])


def test_the_moving_average_resumes_from_the_strategy_state() -> None:
    a = CheckpointedStrategy(FedAvg(), ema_decay=0.7)
    _aggregate_round(a, 1, 1.0)
    _aggregate_round(a, 2, 2.0)
    b = CheckpointedStrategy(FedAvg(), ema_decay=0.7, start_round=3)
    b.load_state_dict(a.state_dict())
    a_third, b_third = _aggregate_round(a, 3, 0.5), _aggregate_round(b, 1, 0.5)
    assert all(np.array_equal(a_third[k], b_third[k]) for k in a_third)
    aggregate = ArrayRecord({k: Array(v) for k, v in a_third.items()})
    for key in a_third:
        assert np.array_equal(
            a.evaluated(aggregate)[key].numpy(), b.evaluated(aggregate)[key].numpy()
        ), key
    with pytest.raises(ValueError, match=r"federation\.ema_decay is null"):
        CheckpointedStrategy(FedAvg()).load_state_dict(a.state_dict())


def test_without_an_average_the_sites_validate_the_aggregate() -> None:
    strategy = CheckpointedStrategy(FedAvg())
    second = _aggregate_round(strategy, 1, 2.0)
    aggregate = ArrayRecord({k: Array(v) for k, v in second.items()})
    assert strategy.evaluated(aggregate) is aggregate
    assert "ema" not in strategy.state_dict()


def test_the_round_record_times_the_sites_training_apart_from_the_aggregation(
    monkeypatch,
) -> None:
    """``phase_seconds``: from the training messages' going out to the replies' arrival,
    the aggregation, and the evaluation's messages to their replies, each on its own."""
    now = iter([10.0, 13.5, 13.5, 13.75, 20.0, 21.0])  # out, in, aggregating, done, eval
    monkeypatch.setattr("strategies.round_record.perf_counter", lambda: next(now))
    wrapped = _configured(CheckpointedStrategy(FedAvg()))
    wrapped.aggregate_train(1, _replies(["site-0", "site-1", "site-2"]))
    grid = types.SimpleNamespace(get_node_ids=lambda: [11, 22, 33])
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    wrapped.configure_evaluate(1, arrays, ConfigRecord(), grid)
    wrapped.aggregate_evaluate(1, [])
    record = wrapped._current(1)
    assert record.phase_seconds == {"train": 3.5, "aggregate": 0.25, "evaluate": 1.0}
    assert record.to_dict()["phase_seconds"] == record.phase_seconds
