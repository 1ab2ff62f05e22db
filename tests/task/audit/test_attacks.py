"""The attacks work where privacy is absent, and what protection buys (the audit's claims).

The default federated network at the bundled resolution, its initial weights, images of the
published training split. Leaky: one site's plaintext update of one step on one image.
Blurred: the secure sum of 3 such updates. Protected: a local DP-SGD step at the σ of ε = 3,
and the secure sum of 3 sites' whole rounds (a local epoch each), as the default federation's
server sees it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from task.audit import views
from task.audit.inversion import AttackSettings, inverting_gradients
from task.audit.run import federation_sigma
from task.audit.scores import prior_ssim, score
from task.config import compose_config
from task.models.factory import build_model
from task.privacy.dpsgd import secret_generator

pytestmark = pytest.mark.slow

SETTINGS = AttackSettings(steps=300)
#: Images each site trains on in the whole-round view (its first is the one-step views').
ROUND_IMAGES = 16


@pytest.fixture(scope="module")
def setup():
    cfg = compose_config(["transforms=no_augment"], config_name="audit")
    data = instantiate(cfg.data).load(preprocess=instantiate(cfg.transforms.preprocess))
    mean, std = float(cfg.transforms.norm_mean), float(cfg.transforms.norm_std)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(data.train.images), size=3, replace=False)
    x = torch.from_numpy(data.train.images[idx])
    y = torch.from_numpy(data.train.labels[idx]).long()
    prior = (torch.from_numpy(data.train.images).mean(0, keepdim=True) * std + mean).clamp(0, 1)
    return cfg, data, x, y, mean, std, prior


def _attack(model, target, x, y, mean, std, prior, n_dummies: int = 1) -> dict:
    """Reconstruct ``n_dummies`` images (labels ``y[:n_dummies]`` given), score against
    the target ``x[:1]``, with the average training image's SSIM as ``prior``."""
    bounds = ((0 - mean) / std, (1 - mean) / std)
    shape = (n_dummies, *x.shape[1:])
    recon = inverting_gradients(model, target, y[:n_dummies], shape, bounds, SETTINGS)
    unit = lambda t: (t * std + mean).clamp(0, 1)  # noqa: E731
    return score(unit(recon), unit(x[:1])) | {"prior": prior_ssim(prior, unit(x[:1]))}


def test_one_plaintext_update_of_one_image_gives_the_image_away(setup) -> None:
    cfg, data, x, y, mean, std, prior = setup
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, 2)
    s = _attack(model, views.plain_update(model, x[:1], y[:1]), x[:1], y[:1], mean, std, prior)
    assert s["ssim"] >= 0.6, s
    assert s["ssim"] - s["prior"] >= 0.2, s  # this patient, not a generic radiograph


def test_the_secure_sum_of_three_sites_blurs_what_one_update_gives_away(setup) -> None:
    """Secure aggregation of three one-image, one-step updates is a batch of three to the
    attacker: it no longer gets the image back, but not nothing either (measured in the
    audit: SSIM 0.62 against a prior of 0.50, a blurred mixture of the three images)."""
    cfg, data, x, y, mean, std, prior = setup
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, 2)
    plain = _attack(model, views.plain_update(model, x[:1], y[:1]), x[:1], y[:1], mean, std, prior)
    batches = [(x[i : i + 1], y[i : i + 1]) for i in range(3)]
    # the strongest attacker: three images, all three labels, best match to the target
    secure = _attack(
        model, views.secure_sum_update(model, batches), x, y, mean, std, prior, n_dummies=3
    )
    assert secure["ssim"] <= plain["ssim"] - 0.25, (plain, secure)
    assert secure["mse"] >= 10 * plain["mse"], (plain, secure)


def test_a_dp_sgd_step_at_epsilon_3_hides_the_image(setup) -> None:
    """The DP-compatible model (GroupNorm) and its DP-SGD step, with the control first: the
    same step with the noise switched off (σ = 0: clipped, no privacy), which is this
    model's plain update rescaled, gives the image away to the same attack; with the σ of
    ε = 3 it does not."""
    cfg, data, x, y, mean, std, prior = setup
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, 2, dp_compatible=True)

    def dp_step(sigma: float) -> list[torch.Tensor]:
        return views.dp_update(
            model,
            x[:1],
            y[:1],
            noise_multiplier=sigma,
            max_grad_norm=1.0,
            generator=secret_generator(),
        )

    clipped = dp_step(0.0)
    plain = views.plain_update(model, x[:1], y[:1])
    flat = lambda grads: torch.cat([g.reshape(-1) for g in grads])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(clipped), flat(plain), dim=0) > 0.999
    leak = _attack(model, clipped, x[:1], y[:1], mean, std, prior)
    assert leak["ssim"] >= 0.6, leak
    assert leak["ssim"] - leak["prior"] >= 0.2, leak
    s = _attack(model, dp_step(federation_sigma(cfg.audit.dp)), x[:1], y[:1], mean, std, prior)
    assert s["ssim"] <= 0.2, (leak, s)


def test_the_secure_sum_of_three_whole_rounds_recovers_nothing(setup) -> None:
    """What the default federation's server sees: the mean of 3 sites' updates after a local
    epoch each (16 images, batch 1, SGD), the fixture's 3 images first. Measured: the best
    matches among the target site's 16 images score SSIM 0.54 against the average training
    image's 0.56 (nothing beyond a generic radiograph); the one-step sum of the first images
    0.59 against 0.50. Not the issue's "SSIM ≤ 0.2": best matches of chest radiographs sit
    near the prior, not near 0, even when nothing is recovered."""
    cfg, data, x, y, mean, std, prior = setup
    rng = np.random.default_rng(1)
    more = rng.choice(len(data.train.images), size=3 * (ROUND_IMAGES - 1), replace=False)
    extra_x = torch.from_numpy(data.train.images[more])
    extra_y = torch.from_numpy(data.train.labels[more]).long()
    n = ROUND_IMAGES - 1
    rounds = [
        (
            torch.cat([x[i : i + 1], extra_x[i * n : (i + 1) * n]]),
            torch.cat([y[i : i + 1], extra_y[i * n : (i + 1) * n]]),
        )
        for i in range(3)
    ]
    torch.manual_seed(0)
    model = build_model(cfg.model, data.in_shape, 2)
    batches = [(x[i : i + 1], y[i : i + 1]) for i in range(3)]
    one_step = _attack(
        model, views.secure_sum_update(model, batches), x, y, mean, std, prior, n_dummies=3
    )
    target = views.round_update(model, rounds, batch_size=1, lr=0.01)
    bounds = ((0 - mean) / std, (1 - mean) / std)
    recon = inverting_gradients(model, target, y, tuple(x.shape), bounds, SETTINGS)
    unit = lambda t: (t * std + mean).clamp(0, 1)  # noqa: E731
    truth = unit(rounds[0][0])
    whole = score(unit(recon), truth) | {"prior": prior_ssim(prior, truth)}
    # The audit's verdict "nothing recovered beyond what the average X-ray already shows",
    # and less than the one-step sum of the same first images gives away.
    assert whole["ssim"] - whole["prior"] < cfg.audit.margin, whole
    assert whole["ssim"] - whole["prior"] < one_step["ssim"] - one_step["prior"], (one_step, whole)


def test_on_the_cpu_the_attacker_gets_the_victim_itself(tmp_path) -> None:
    from task.audit.entries import AuditSetup

    setup = AuditSetup(0.5, 0.25, AttackSettings(), 10, 0, tmp_path, (0.25, 0.1))
    model, target, labels = torch.nn.Linear(4, 2), [torch.zeros(2, 4)], torch.zeros(1).long()
    got = setup.attacker(model, target, labels)
    assert got[0] is model and got[1] is target and got[2] is labels  # nothing copied


def test_an_audit_on_a_missing_gpu_is_refused_before_any_attack(tmp_path, monkeypatch) -> None:
    from task.audit.run import run_audit
    from task.runtime.device import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config(["device=cuda:0"], config_name="audit")
    with pytest.raises(DeviceError, match=r"^device='cuda:0': no CUDA GPU"):
        run_audit(cfg, tmp_path, model_option="small_cnn")
