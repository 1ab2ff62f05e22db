"""The malicious-server view: a server that sends the sites different models gets the
target's image out of the secure sum without the sites' checks, and nothing with them.

The default federated network at its initial weights, 3 sites of one image each (the
attack's setting), images of the published training split, the real protocol state
machines.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from mpc.secagg import protocol
from task.audit import views
from task.audit.inversion import AttackSettings, inverting_gradients
from task.audit.malicious_server import inconsistent_round, server_checks
from task.audit.run import verdict
from task.audit.scores import prior_ssim, score
from task.config import compose_config
from task.models.factory import build_model

#: A small attack budget: enough at batch 1 against an exactly isolated gradient.
SETTINGS = AttackSettings(steps=150)


@pytest.fixture(scope="module")
def setup():
    cfg = compose_config(["transforms=no_augment"], config_name="audit")
    data = instantiate(cfg.data).load(preprocess=instantiate(cfg.transforms.preprocess))
    mean, std = float(cfg.transforms.norm_mean), float(cfg.transforms.norm_std)
    idx = np.random.default_rng(0).choice(len(data.train.images), size=3, replace=False)
    x = torch.from_numpy(data.train.images[idx])
    y = torch.from_numpy(data.train.labels[idx]).long()
    batches = [(x[i : i + 1], y[i : i + 1]) for i in range(3)]
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, 2)
    unit = lambda t: (t * std + mean).clamp(0, 1)  # noqa: E731
    prior = unit(torch.from_numpy(data.train.images).mean(0, keepdim=True))
    return cfg, model, batches, (mean, std), unit, prior


def test_without_the_checks_the_round_gives_the_target_image_away(setup) -> None:
    cfg, model, batches, (mean, std), unit, prior = setup
    got = inconsistent_round(model, batches, checks=False)
    assert protocol.ACTIVE_SERVER_CHECKS  # the switch is restored
    assert got.refusals == {} and got.masked_inputs == 3
    # The revealed sum minus the zero-model sites' predicted parts is the target's own
    # update, to the fixed-point precision.
    x, y = batches[0]
    for recovered, truth in zip(got.target, views.plain_update(model, x, y), strict=True):
        torch.testing.assert_close(recovered, truth, rtol=0, atol=1e-8)
    bounds = ((0 - mean) / std, (1 - mean) / std)
    recon = inverting_gradients(model, got.target, y, tuple(x.shape), bounds, SETTINGS)
    s = score(unit(recon), unit(x))
    p = prior_ssim(prior, unit(x))
    assert s["ssim"] - p >= cfg.audit.recovered_margin, (s, p)
    assert verdict(s["ssim"], p, cfg.audit.recovered_margin, cfg.audit.margin).startswith(
        "images recovered"
    )


def test_with_the_checks_the_sites_refuse_and_the_attacker_receives_nothing(setup) -> None:
    """The checks are on by default: this test does not touch the switch, so it fails if
    the sites stop comparing the digests of what they were sent."""
    _, model, batches, *_ = setup
    assert protocol.ACTIVE_SERVER_CHECKS
    got = inconsistent_round(model, batches, checks=True)
    assert got.target is None and got.masked_inputs == 0
    assert sorted(got.refusals) == ["site-0", "site-1", "site-2"]
    assert "sites ['site-1', 'site-2'] signed another round digest" in got.refusals["site-0"]
    outcome = got.outcome()
    assert outcome.startswith("refused by the sites: round 1 (train): sites ['site-1', 'site-2']")
    assert outcome.endswith("; the attacker received nothing")


def test_the_switch_is_restored_when_the_round_fails() -> None:
    with pytest.raises(RuntimeError), server_checks(False):
        assert not protocol.ACTIVE_SERVER_CHECKS
        raise RuntimeError("boom")
    assert protocol.ACTIVE_SERVER_CHECKS


def test_a_model_whose_zero_update_depends_on_the_images_is_refused() -> None:
    """A linear model on fixed features: zero weights leave its gradient (p - y) x, which
    the attacker cannot predict; the view says so instead of reporting a wrong sum."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(1, 1, 2, 2, generator=g), torch.tensor([i % 2])) for i in range(3)]
    with pytest.raises(ValueError, match=r"gradient of 1\.weight depends on its images"):
        inconsistent_round(model, batches, checks=False)
