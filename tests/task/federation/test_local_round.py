"""Site-side round logic: learning-rate schedule, pooled metrics, seeded local training,
central DP's clipped and noised update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import matthews_corrcoef

from task.config import compose_config
from task.data.sites import load_site, partition_site
from task.federation import local_round
from task.federation.local_round import local_evaluate, local_train, round_lr, uses_bf16
from task.federation.pooling import confusion_counts, pooled_metrics
from task.models.factory import build_model
from task.privacy import privacy_of
from task.privacy.update_noise import clip_and_noise


def test_round_lr_schedules() -> None:
    assert round_lr(0.1, 1, 10, "constant") == round_lr(0.1, 10, 10, "constant") == 0.1
    assert round_lr(0.1, 1, 10, "cosine") == pytest.approx(0.1)
    assert round_lr(0.1, 6, 10, "cosine") == pytest.approx(0.05)
    with pytest.raises(ValueError, match="linear"):
        round_lr(0.1, 1, 10, "linear")


def test_precision_is_fp32_or_bf16_and_anything_else_is_refused_by_value() -> None:
    assert not uses_bf16(compose_config(["train.precision=fp32"]))
    assert uses_bf16(compose_config(["train.precision=bf16"]))
    with pytest.raises(ValueError, match=r"train\.precision='fp16'"):
        uses_bf16(compose_config(["train.precision=fp16"]))


def test_pooled_metrics_match_sklearn_on_pooled_predictions() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = rng.dirichlet([1, 1], 300)
    cm = np.asarray(confusion_counts(labels, probs, 2)).reshape(2, 2)
    pooled = pooled_metrics(cm)
    assert pooled["mcc"] == pytest.approx(matthews_corrcoef(labels, probs.argmax(1)))
    assert pooled["accuracy"] == pytest.approx((labels == probs.argmax(1)).mean())


BASE = [
    "data.limit=300",
    "federation.num_sites=3",
    "model=small_cnn",
    "model.channels=[8,16,32,64]",
]


@pytest.fixture(scope="module")
def cfg():
    return compose_config(BASE)


def test_sites_partition_the_pool_and_keep_their_own_validation(cfg) -> None:
    sites = [partition_site(cfg, i, 3) for i in range(3)]
    sizes = [len(s.splits.train) + len(s.splits.val) for s in sites]
    assert sum(sizes) == 600  # limit 300 of train + 300 of val, pooled, then split
    assert all(len(s.splits.val) > 0 and len(s.splits.test) == 0 for s in sites)
    with pytest.raises(ValueError, match="names no data"):
        load_site(cfg, {"site-name": "x"})


def test_local_train_is_seeded_by_round_and_counts_examples(cfg) -> None:
    site = partition_site(cfg, 0, 3)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        model = build_model(cfg.model, site.splits.in_shape, 2)
        r = local_train(model, site, cfg, server_round=2)
        results.append((r, [p.detach().clone() for p in model.parameters()]))
    (r1, w1), (_, w2) = results
    assert r1.num_examples == len(site.splits.train)  # one local epoch: examples, not batches
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))
    m = local_evaluate(model, site.splits.val, site.splits.classes)
    assert m["num-examples"] == len(site.splits.val) and sum(m["confusion"]) == m["num-examples"]


def test_local_steps_take_precedence(cfg) -> None:
    from omegaconf import OmegaConf

    steps_cfg = OmegaConf.merge(cfg, {"federation": {"local_steps": 2}})
    site = partition_site(cfg, 1, 3)
    model = build_model(cfg.model, site.splits.in_shape, 2)
    r = local_train(model, site, steps_cfg, server_round=1)
    assert r.num_examples == 2 * cfg.train.batch_size


def test_local_dp_calibrates_the_moments_once_and_accounts_the_release(tmp_path) -> None:
    from task.privacy import privacy_of
    from task.privacy.ledger import SiteLedger, plan_round

    dp_cfg = compose_config(
        ["data.limit=300", "privacy=local_dp", "federation.num_rounds=3", "train.batch_size=32"]
    )
    privacy = privacy_of(dp_cfg)
    site = partition_site(dp_cfg, 0, 3)
    ledger = SiteLedger(privacy, tmp_path, site.name)
    model = build_model(dp_cfg.model, site.splits.in_shape, 2, dp_compatible=True)
    assert model.needs_calibration()
    first = local_train(model, site, dp_cfg, server_round=1, ledger=ledger)
    assert not model.needs_calibration()
    assert ledger.accountant.history[0] == privacy.calibration_history()[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # Round 2 receives the calibrated model: no second release, only DP-SGD steps.
    model = build_model(dp_cfg.model, site.splits.in_shape, 2, dp_compatible=True)
    model.load_state_dict(state)
    second = local_train(model, site, dp_cfg, server_round=2, ledger=ledger)
    releases = [h for h in ledger.accountant.history if h[1] == 1.0]  # DP-SGD samples: q < 1
    assert releases == [privacy.calibration_history()[0]]
    assert torch.equal(model.feature_mean, state["feature_mean"])  # buffers are not trained
    assert first.privacy["epsilon"] < second.privacy["epsilon"] <= privacy.epsilon
    # dp-steps counts DP-SGD's steps only: the release is reported apart, once.
    steps = plan_round(
        privacy,
        n_train=len(site.splits.train),
        batch_size=32,
        local_steps=None,
        local_epochs=int(dp_cfg.federation.local_epochs),
        num_rounds=3,
    ).steps
    assert first.privacy["dp-steps"] == steps and second.privacy["dp-steps"] == 2 * steps
    assert first.privacy["dp-releases"] == second.privacy["dp-releases"] == 1
    assert ledger.accountant.steps == 2 * steps + 1
    # The noise-free training loss is no part of what the ledger accounts: none is sent.
    assert first.loss is None and second.loss is None


def _central_dp_violations(cfg) -> list[str]:
    """Run ``local_train`` from one global model without privacy (the plain update), then
    twice under ``privacy=central_dp``. Returns what is wrong with the update a site sends:
    not clipped to ``privacy.clip_norm``, noise not of the configured standard deviation,
    or the same noise in both runs."""
    dp_cfg = compose_config(
        [*BASE, "privacy=central_dp", "privacy.noise_multiplier=0.2", "privacy.clip_norm=0.05"]
    )
    privacy = privacy_of(dp_cfg)
    std = privacy.site_noise_std(int(dp_cfg.federation.num_rounds))
    site = partition_site(cfg, 0, 3)
    torch.manual_seed(7)
    start = build_model(cfg.model, site.splits.in_shape, 2, dp_compatible=True).state_dict()

    def update(run_cfg) -> torch.Tensor:
        model = build_model(cfg.model, site.splits.in_shape, 2, dp_compatible=True)
        model.load_state_dict(start)
        result = local_train(model, site, run_cfg, server_round=1)
        if run_cfg is dp_cfg:
            assert result.num_examples == 1  # weights that do not depend on the data
        sent = model.state_dict()
        return torch.cat([(sent[k].double() - start[k].double()).reshape(-1) for k in start])

    plain, first, second = update(cfg), update(dp_cfg), update(dp_cfg)
    assert float(plain.norm()) > 5 * privacy.clip_norm  # the clip bound binds
    direction = plain / plain.norm()
    problems = []
    # Training is seeded by round, so the noise-free part of the sent update is clip_norm
    # along the plain update; the noise's projection on that direction is N(0, std²).
    along = float(first @ direction)
    if abs(along - privacy.clip_norm) > 5 * std:
        problems.append(f"not clipped: {along:.4f} along the update, clip {privacy.clip_norm}")
    residual = float((first - privacy.clip_norm * direction).std())
    if not 0.9 * std < residual < 1.1 * std:
        problems.append(f"noise std {residual:.5f}, configured {std:.5f}")
    # Fresh noise every run: two runs differ by noise of std·√2.
    between = float((first - second).std()) / math.sqrt(2)
    if not 0.9 * std < between < 1.1 * std:
        problems.append(f"runs differ by {between:.5f}·√2, not by the noise's {std:.5f}·√2")
    return problems


def test_central_dp_sends_a_clipped_update_with_noise_of_the_configured_std(cfg) -> None:
    assert _central_dp_violations(cfg) == []


@pytest.mark.parametrize(
    ("removed", "detected", "not_reported"),
    [
        ("clip and noise", ["not clipped", "noise std", "runs differ"], []),
        ("clip", ["not clipped"], ["runs differ"]),
        ("noise", ["noise std", "runs differ"], ["not clipped"]),
    ],
    ids=["clip_and_noise_off", "clip_off", "noise_off"],
)
def test_central_dp_check_detects_a_missing_clip_or_noise(
    cfg, monkeypatch, removed, detected, not_reported
) -> None:
    """Negative control of the test above: with the site's clip and noise switched off by a
    test hook (``clip_and_noise`` a no-op), or only its clip, or only its noise, the check
    reports exactly what is missing."""
    off = {"clip": {"clip_norm": 1e9}, "noise": {"noise_std": 0.0}}.get(removed)
    monkeypatch.setattr(
        local_round,
        "clip_and_noise",
        (lambda *args, **kwargs: None)
        if off is None
        else (lambda *args, **kwargs: clip_and_noise(*args, **{**kwargs, **off})),
    )
    problems = _central_dp_violations(cfg)
    assert all(any(p.startswith(d) for p in problems) for d in detected), problems
    assert not any(p.startswith(n) for p in problems for n in not_reported), problems
