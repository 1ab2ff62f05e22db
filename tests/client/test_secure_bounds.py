"""Bad updates under secure aggregation: the site refuses to send them, the server checks
what it can see, and what a site that skips its own checks can still do.

The secure mod runs for real (key stages, masking, unmasking through the in-process grid);
the training handler is a stand-in that returns chosen weights, so each site's update is
exactly what a test needs, honest or not.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity
from hydra.utils import instantiate
from omegaconf import OmegaConf

from client.secure import make_secure
from mpc.secagg import wire, work
from mpc.secagg.identity import write_identities
from strategies.checkpointed import CheckpointedStrategy
from task.config import compose_config
from task.constants import SITE_RECORD
from tests.inprocess_grid import NODES, InProcessGrid

BOUND = 1.0
GLOBAL = {
    "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3),
    "b": np.zeros(3, dtype=np.float32),
    "steps": np.array(5, dtype=np.int64),
}
RNG = np.random.default_rng(3)


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


@pytest.fixture(autouse=True)
def _one_setup(monkeypatch):
    """Sites here hold different bounds in their configs, to play a site that skips its
    check. Such a site would sign the run setup's digest the others sign (it lies about
    nothing else), so every site signs the same one here."""
    monkeypatch.setattr(work, "setup_digest", lambda cfg: bytes(32))


@pytest.fixture(scope="module")
def roster(tmp_path_factory):
    return write_identities(tmp_path_factory.mktemp("ids"), [f"site-{i}" for i in range(3)])


def _cfg(roster, max_norm):
    """The site's composed config with ``max_norm`` as its bound. Set after composing: a
    bad bound is refused at composition too (tests/task/federation/test_settings.py), and
    here the site's own check must hold for a config that reached it."""
    cfg = compose_config(["logger=none", f"secure.roster={roster}"])
    OmegaConf.update(cfg, "federation.max_update_norm", max_norm)
    return cfg


def _honest(scale: float = 0.3) -> dict[str, np.ndarray]:
    """Global weights moved by a random update of norm ``scale`` (< BOUND)."""
    delta = {k: RNG.normal(size=GLOBAL[k].shape) for k in ("w", "b")}
    norm = np.sqrt(sum(float((d**2).sum()) for d in delta.values()))
    out = {k: (GLOBAL[k] + d * scale / norm).astype(np.float32) for k, d in delta.items()}
    return out | {"steps": GLOBAL["steps"] + 3}


def _app(updates: dict[int, tuple[dict[str, np.ndarray], int]], cfg_of):
    """A ClientApp with the real secure mod around a handler that returns, at node ``i``,
    the weights and example count ``updates[i]``."""
    query, mod = make_secure(cfg_of)
    app = ClientApp()
    app.query("secagg")(query)

    @app.train(mods=[mod])
    def train(msg: Message, context: Context) -> Message:
        weights, n = updates[context.node_id]
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()}),
                "metrics": MetricRecord({"num-examples": n, "loss": 0.25}),
                SITE_RECORD: ConfigRecord({"name": f"site-{NODES.index(context.node_id)}"}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def _round(roster, updates, *, server_bound=BOUND, site_bounds=None, wrap=None):
    """One secure training round; ``site_bounds`` ({node: bound}) overrides the bound a
    site's own config holds (a site that skips its check), ``wrap`` the app's replies."""
    cfgs = {node: _cfg(roster, (site_bounds or {}).get(node, server_bound)) for node in NODES}
    app = _app(updates, lambda context: cfgs[context.node_id])
    if wrap is not None:
        app = wrap(app)
    cfg = _cfg(roster, server_bound)
    secure = instantiate(cfg.secure)(instantiate(cfg.strategy), max_update_norm=server_bound)
    strategy = CheckpointedStrategy(secure, max_update_norm=server_bound)
    grid = InProcessGrid(app)
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    replies = grid.send_and_receive(list(strategy.configure_train(1, arrays, ConfigRecord(), grid)))
    result = strategy.aggregate_train(1, replies)
    return result, {r.metadata.src_node_id: r for r in replies}, strategy._current(1)


def _fedavg(pairs):
    total = sum(n for _, n in pairs)
    return {k: sum(w[k].astype(np.float64) * n for w, n in pairs) / total for k in ("w", "b")}


def _nan_update():
    weights = _honest()
    weights["w"][3, 0] = np.nan
    return weights


def _far_update():
    return _honest(scale=3 * BOUND)


def _huge_update():
    # 1e6 x 100 examples is beyond the fixed-point range of 2^31 / 100 = 2.1e7.
    return {k: (v + 1e6).astype(v.dtype) for k, v in _honest().items()}


@pytest.mark.parametrize(
    ("make", "server_bound", "reason"),
    [
        (_nan_update, BOUND, "tensor 'w' holds 1 non-finite value(s) (first: nan at index (3, 0))"),
        (_far_update, BOUND, "update norm 3 exceeds federation.max_update_norm=1"),
        (_huge_update, None, "'arrays/w' reaches magnitude 1e+08, outside the fixed-point range"),
    ],
    ids=["nan", "norm", "range"],
)
def test_a_site_refuses_to_send_a_bad_update_and_the_round_goes_on(
    roster, make, server_bound, reason
) -> None:
    good = {101: (_honest(), 100), 103: (_honest(), 300)}
    updates = good | {102: (make(), 100)}
    (arrays, metrics), replies, record = _round(roster, updates, server_bound=server_bound)
    refused = replies[102]
    assert refused.has_error()
    assert "UpdateRejected" in refused.error.reason
    assert "update of site 'site-1' rejected" in refused.error.reason
    assert reason in refused.error.reason
    assert record.failures["train"] == 1 and reason in record.train_errors[0]
    assert metrics["secure-sites"] == 2
    want = _fedavg(list(good.values()))
    for key in want:
        np.testing.assert_allclose(arrays[key].numpy(), want[key], rtol=0, atol=1e-6)


def test_a_bad_configured_bound_stops_the_site_naming_the_value(roster) -> None:
    updates = {node: (_honest(), 100) for node in NODES}
    _, replies, _ = _round(roster, updates, site_bounds={102: -1.0})
    assert "federation.max_update_norm=-1.0 must be a positive finite number" in (
        replies[102].error.reason
    )


def test_a_site_that_skips_its_check_cannot_push_the_mean_beyond_the_bound(roster) -> None:
    updates = {101: (_honest(), 100), 102: (_far_update(), 1000), 103: (_honest(), 100)}
    result, replies, record = _round(roster, updates, site_bounds={102: None})
    assert not any(r.has_error() for r in replies.values())  # the masks hide the bad update
    assert result == (None, None)  # ... but the revealed mean gives it away: round discarded
    assert "the revealed mean update of 3 site(s) has norm" in record.rejected["secure-sum"]
    assert "beyond federation.max_update_norm=1" in record.rejected["secure-sum"]


def test_within_the_bound_an_inflated_example_count_steers_the_mean(roster) -> None:
    """What docs/secure-aggregation.md says a malicious site can still do: its example
    count is inside the masked vector, so with a false, huge count its own update becomes
    the mean."""
    attack = _honest(scale=0.9 * BOUND)
    updates = {101: (_honest(), 100), 102: (attack, 10**6), 103: (_honest(), 100)}
    (arrays, _), _, record = _round(roster, updates)
    assert record.rejected == {}
    for key in ("w", "b"):
        np.testing.assert_allclose(arrays[key].numpy(), attack[key], atol=1e-3)


def test_a_reply_whose_layout_differs_from_the_global_model_is_refused_even_first(
    roster,
) -> None:
    def rename_first_sites_tensor(app):
        def call(msg: Message, context: Context) -> Message:
            reply = app(msg, context)
            if context.node_id == 101 and wire.LAYOUT in reply.content.config_records:
                record = reply.content.config_records[wire.LAYOUT]
                record["layout"] = str(record["layout"]).replace('"arrays/b"', '"arrays/c"')
            return reply

        return call

    good = {102: (_honest(), 100), 103: (_honest(), 300)}
    (arrays, metrics), _, record = _round(
        roster, good | {101: (_honest(), 100)}, wrap=rename_first_sites_tensor
    )
    assert (
        "layout does not match the global model at ['arrays/b', 'arrays/c']"
        in (record.rejected["site-0"])
    )
    assert metrics["secure-sites"] == 2
    want = _fedavg(list(good.values()))
    np.testing.assert_allclose(arrays["w"].numpy(), want["w"], rtol=0, atol=1e-6)
