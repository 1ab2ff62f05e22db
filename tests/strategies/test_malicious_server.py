"""Secure aggregation against a malicious coordinator, each claim as an attack.

The attackers (:mod:`tests.strategies.adversary`) act on the real ClientApps (real data,
real training, the real secure mod) through the in-process grid. Each attack is first run
with the sites' checks off (``protocol.ACTIVE_SERVER_CHECKS``, a test-only switch), where
it must succeed, which proves it is an attack; then with the checks on, where it must get
nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from hydra.utils import instantiate

from client.client_app import make_client_app
from mpc.secagg import protocol
from mpc.secagg.identity import write_identities
from task.config import compose_config
from task.models.factory import build_model
from tests.inprocess_grid import InProcessGrid
from tests.strategies.adversary import InconsistentModel, _zeros, decoded_weights, equivocate

BASE = [
    "federation.local_steps=3",
    "train.batch_size=16",
    "model=small_cnn",
    "model.channels=[4,8,8,8]",
    "logger=none",
]
THREE = [*BASE, "data.limit=240"]
FIVE = [*BASE, "data.limit=600", "federation.num_sites=5"]
FIVE_NODES = (201, 202, 203, 204, 205)


@pytest.fixture
def checks_off(monkeypatch):
    monkeypatch.setattr(protocol, "ACTIVE_SERVER_CHECKS", False)


def _ids(tmp_path, n):
    return write_identities(tmp_path / "ids", [f"site-{i}" for i in range(n)])


def _global(cfg) -> ArrayRecord:
    return ArrayRecord(build_model(cfg.model, (1, 28, 28), 2).state_dict())


def _plain_weights(overrides, arrays, node_config, config=None) -> dict[str, np.ndarray]:
    """What one site's training returns in the clear (the ground truth)."""
    app = make_client_app([*overrides, "secure=none"])
    context = Context(
        run_id=7, node_id=1, node_config=node_config, state=RecordDict(), run_config={}
    )
    content = RecordDict({"arrays": arrays, "config": config or ConfigRecord({"server-round": 1})})
    reply = app(Message(content=content, message_type="train", dst_node_id=1), context)
    return {k: a.numpy() for k, a in reply.content["arrays"].items()}


# -- (a) model inconsistency ---------------------------------------------------------------
def _inconsistent(tmp_path, commit_each=True):
    roster = _ids(tmp_path, 3)
    overrides = [*THREE, "secure=smpc", f"secure.roster={roster}"]
    cfg = compose_config(overrides)
    silent = int(cfg.federation.num_rounds) + 1  # cosine: lr = 0 after the last round
    attacker = InconsistentModel(
        instantiate(cfg.strategy),
        silent_round=silent,
        commit_each=commit_each,
        roster=str(roster),
        threshold=float(cfg.secure.threshold),
    )
    return attacker, InProcessGrid(make_client_app(overrides)), _global(cfg), silent


def test_model_inconsistency_recovers_the_target_update_without_the_checks(tmp_path, checks_off):
    attacker, grid, arrays, silent = _inconsistent(tmp_path)
    replies = grid.send_and_receive(list(attacker.configure_train(1, arrays, ConfigRecord(), grid)))
    attacker.aggregate_train(1, replies)
    # The attacker predicts a silenced site's update on data of its own (another partition).
    zeros = _zeros(arrays)
    shadow = {"partition-id": 1, "num-partitions": 2}
    predicted = _plain_weights(THREE, zeros, shadow, ConfigRecord({"server-round": silent}))
    recovered = attacker.recover(predicted, n_predicted=3 * 16)
    truth = _plain_weights(THREE, arrays, {"partition-id": 0, "num-partitions": 3})
    assert attacker.target == 101
    for key, value in truth.items():
        np.testing.assert_allclose(recovered[key], value, rtol=0, atol=1e-6, err_msg=key)
    assert any(np.abs(v).max() > 0 for v in truth.values())


def test_model_inconsistency_is_refused_by_every_site_naming_the_digests(tmp_path):
    """Each site compares its cohort's signed commitments with its own before training:
    every one refuses, naming the sites that were sent other work, and the server
    receives no masked input."""
    attacker, grid, arrays, _ = _inconsistent(tmp_path)
    replies = grid.send_and_receive(list(attacker.configure_train(1, arrays, ConfigRecord(), grid)))
    reasons = [r.error.reason for r in replies if r.has_error()]
    assert len(reasons) == len(replies) == 3
    target = "sites ['site-1', 'site-2'] signed another round digest than site 'site-0'"
    assert sum(target in r for r in reasons) == 1
    assert sum("sites ['site-0'] signed another round digest" in r for r in reasons) == 2
    assert attacker.aggregate_train(1, replies) == (None, None)
    assert not any(st == "mask" for st, _, _ in attacker.transcripts[-1].transcript)


def test_a_model_other_than_the_committed_one_is_refused_at_the_mask_stage(tmp_path, caplog):
    """The server commits to the real model for all, then sends the zero model to two
    sites: they refuse before training, and the target's masked input alone is never
    unmasked."""
    attacker, grid, arrays, _ = _inconsistent(tmp_path, commit_each=False)
    replies = grid.send_and_receive(list(attacker.configure_train(1, arrays, ConfigRecord(), grid)))
    refused = [r for r in replies if r.has_error()]
    assert len(refused) == 2
    assert all("not to the digest" in r.error.reason for r in refused)
    assert attacker.aggregate_train(1, replies) == (None, None)
    assert not any(st == "unmask" for st, _, _ in attacker.transcripts[-1].transcript)


@pytest.mark.slow
def test_a_malicious_serverapp_in_a_flower_simulation_gets_nothing(tmp_path):
    """The same attack as a ServerApp in Flower's simulation runtime (Ray workers, honest
    ClientApps): every site refuses the training round at the mask stage, before training,
    and no masked input reaches the server; the honest evaluation round of the same run
    completes."""
    from flwr.simulation import run_simulation

    from scripts.sim_engine import message_polling
    from server.server_app import make_server_app
    from task.constants import SIM_PULL_INTERVAL
    from tests.strategies import adversary

    run_dir = tmp_path / "run"
    roster = _ids(tmp_path, 3)
    sites = [*THREE, "secure=smpc", f"secure.roster={roster}", f"run_dir={run_dir}"]
    sites += ["federation.num_rounds=1", "metrics.n_bootstrap=20"]
    server = [*sites, f"secure._target_={InconsistentModel.__module__}.InconsistentModel"]
    server.append("+secure.silent_round=2")
    with message_polling(SIM_PULL_INTERVAL):
        run_simulation(
            server_app=make_server_app(server, pull_interval=SIM_PULL_INTERVAL),
            client_app=make_client_app(sites),
            num_supernodes=3,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
            },
        )
    attacker = adversary.INSTANCES[-1]
    train, evaluate = (s for s in attacker.transcripts if s.round_id.kind in ("train", "evaluate"))
    assert train.round_id.kind == "train" and evaluate.round_id.kind == "evaluate"
    assert not train.masked and not any(st == "mask" for st, _, _ in train.transcript)
    assert attacker.revealed is None
    assert evaluate.unmasks and len(evaluate.masked) == 3  # the honest round went through
    assert (run_dir / "metrics.json").is_file()


# -- (b) threshold lie and equivocation at unmask ------------------------------------------
def _five(tmp_path):
    roster = _ids(tmp_path, 5)
    overrides = [*FIVE, "secure=smpc", f"secure.roster={roster}"]
    cfg = compose_config(overrides)
    grid = InProcessGrid(make_client_app(overrides), nodes=FIVE_NODES)
    arrays = _global(cfg)
    messages = list(FedAvg().configure_train(1, arrays, ConfigRecord(), grid))
    truth = _plain_weights(FIVE, arrays, {"partition-id": 0, "num-partitions": 5})
    return grid, messages, truth, roster.parent


SCENARIOS = {
    # no colluder: two sites told the target dropped, the target and two others not
    "no-colluder": ({"site-1", "site-2"}, set()),
    # two colluding sites at the default fraction
    "two-colluders": ({"site-1", "site-2"}, {"site-3", "site-4"}),
}


def _equivocate(tmp_path, scenario: str):
    """The attack of ``scenario`` against five real ClientApps; what it got, and the
    target's true update."""
    told_dropped, colluders = SCENARIOS[scenario]
    grid, messages, truth, ids = _five(tmp_path)
    out = equivocate(
        grid,
        messages,
        target="site-0",
        told_dropped=told_dropped,
        colluders=colluders,
        identities=ids,
    )
    return out, truth


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_threshold_lie_and_equivocation_recover_an_input_without_the_checks(
    tmp_path, checks_off, scenario
):
    out, truth = _equivocate(tmp_path, scenario)
    assert out.recovered is not None
    recovered = decoded_weights(out.recovered, out.layout)
    for key, value in truth.items():
        np.testing.assert_allclose(recovered[key], value, rtol=0, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_with_the_checks_the_equivocating_server_learns_nothing(tmp_path, scenario):
    told_dropped, colluders = SCENARIOS[scenario]
    out, truth = _equivocate(tmp_path, scenario)
    # t = 4 of the 5 verified adverts, whatever the server claims: a list signed by fewer
    # than 4 releases nothing. Without colluders no group reaches 4; with two, the group
    # told that site-0 dropped does (2 honest + 2 colluders) and releases shares of its
    # mask key, but site-0's self-mask seed then stays behind 4 shares the server lacks.
    assert "site-0" in out.refused and "signed the survivor list" in out.refused["site-0"]
    if not colluders:
        assert not out.released
    else:
        assert set(out.released) == told_dropped
        assert all("b:site-0" not in shares for shares in out.released.values())
    if out.recovered is not None:
        recovered = decoded_weights(out.recovered, out.layout)
        assert not all(np.allclose(recovered[k], truth[k], atol=1e-3) for k in truth)
