"""The resumable wrapper: order-independent aggregation, records, failures, state."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAdam, FedAvg

from strategies.checkpointed import CheckpointedStrategy
from strategies.metrics import pooled_evaluate_metrics
from tests.strategies.conftest import error_reply, eval_reply, train_reply

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


def _replies(order, nodes=(11, 22, 33)):
    return [train_reply(node, name, *SITES[name]) for node, name in zip(nodes, order, strict=True)]


def test_fedavg_weights_by_examples_independent_of_reply_order() -> None:
    wrapped = CheckpointedStrategy(FedAvg())
    a, _ = wrapped.aggregate_train(1, _replies(["site-0", "site-1", "site-2"]))
    b, _ = CheckpointedStrategy(FedAvg()).aggregate_train(
        1, _replies(["site-2", "site-0", "site-1"], nodes=(5, 9, 1))
    )
    total = sum(n for _, n in SITES.values())
    expected = sum(w["w"] * n for w, n in SITES.values()) / total
    np.testing.assert_allclose(a["w"].numpy(), expected, rtol=1e-6)
    assert np.array_equal(a["w"].numpy(), b["w"].numpy())  # bit-identical


def test_failed_site_is_counted_and_round_goes_on() -> None:
    wrapped = CheckpointedStrategy(FedAvg(), start_round=4)
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
    a = CheckpointedStrategy(FedAdam(eta=0.1, eta_l=0.1))
    initial = {k: np.zeros_like(v) for k, v in SITES["site-0"][0].items()}
    a.inner.current_arrays = initial
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
