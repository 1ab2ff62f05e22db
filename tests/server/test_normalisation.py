"""The federation's intensity statistics by secure sum (PriMIA's first step)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hydra.utils import instantiate

from client.client_app import make_client_app
from mpc.secagg.identity import write_identities
from server.normalisation import federation_intensity
from task.config import compose_config
from task.constants import NORM_MEAN, NORM_STD
from task.data.sites import load_site
from task.models.factory import build_model
from tests.inprocess_grid import NODES, InProcessGrid, masks_off, record_masking

BASE = ["data.limit=240", "logger=none"]


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


def _pooled_truth(cfg) -> tuple[float, float]:
    """Mean and std over all sites' training pixels, computed with every image in hand."""
    raws = []
    for i in range(len(NODES)):
        site = load_site(cfg, {"partition-id": i, "num-partitions": len(NODES)})
        raws.append(site.splits.train.images * cfg.transforms.norm_std + cfg.transforms.norm_mean)
    pixels = np.concatenate([r.reshape(-1) for r in raws]).astype(np.float64)
    return float(pixels.mean()), float(pixels.std())


@pytest.mark.parametrize("secure", ["smpc", "none"])
def test_federation_mean_and_std_equal_the_pooled_pixels(secure, tmp_path, monkeypatch):
    overrides = [*BASE, f"secure={secure}"]
    if secure == "smpc":
        roster = write_identities(tmp_path, [f"site-{i}" for i in range(len(NODES))])
        overrides.append(f"secure.roster={roster}")
    cfg = compose_config(overrides)
    aggregation = instantiate(cfg.secure)(instantiate(cfg.strategy))
    grid = InProcessGrid(make_client_app(overrides))
    calls = record_masking(monkeypatch)
    mean, std = federation_intensity(aggregation, grid, 3, timeout=60)
    want_mean, want_std = _pooled_truth(cfg)
    assert mean == pytest.approx(want_mean, abs=1e-6)
    assert std == pytest.approx(want_std, abs=1e-6)
    if secure == "smpc":  # the server saw masked vectors only
        received = [p for st, _, p in aggregation.transcripts[-1].transcript if st == "mask"]
        assert len(received) == len(calls) == 3
        for (_, plain, sent), got in zip(calls, received, strict=True):
            assert np.array_equal(sent, got)  # what the site sent is what the server got
            assert not np.any(got == plain)  # and no value of it is the site's plaintext


def test_without_masks_the_server_would_see_the_sites_moments(tmp_path, monkeypatch):
    """The control of the test above: with every mask zero, the received vectors are the
    sites' plaintext encodings, which that test's check would catch."""
    roster = write_identities(tmp_path, [f"site-{i}" for i in range(len(NODES))])
    overrides = [*BASE, "secure=smpc", f"secure.roster={roster}"]
    cfg = compose_config(overrides)
    aggregation = instantiate(cfg.secure)(instantiate(cfg.strategy))
    calls = record_masking(monkeypatch)
    masks_off(monkeypatch)
    federation_intensity(aggregation, InProcessGrid(make_client_app(overrides)), 3, timeout=60)
    received = [p for st, _, p in aggregation.transcripts[-1].transcript if st == "mask"]
    assert all(
        np.array_equal(got, plain) for (_, plain, _), got in zip(calls, received, strict=True)
    )


def test_sites_normalise_with_the_statistics_the_server_sends():
    overrides = [*BASE, "secure=none", "federation.local_steps=1"]
    cfg = compose_config(overrides)
    app = make_client_app(overrides)
    grid = InProcessGrid(app)
    model = build_model(cfg.model, (1, 28, 28), 2)

    def evaluate(config: dict) -> float:
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)}
        )
        msg = Message(content=content, dst_node_id=NODES[0], message_type=MessageType.EVALUATE)
        return grid.send_and_receive([msg])[0].content["metrics"]["loss"]

    default = evaluate({"server-round": 1})
    assert evaluate({"server-round": 1}) == default
    assert evaluate({"server-round": 1, NORM_MEAN: 0.1, NORM_STD: 2.0}) != default
