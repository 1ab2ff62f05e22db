"""The ``privacy`` Hydra group's objects: what a site and the server need to know.

Each option is a small frozen dataclass built by ``_target_``; its arguments are checked on
construction, with errors that name the value. The noise is either calibrated from a
target (ε, δ) and the planned work, before training, or given, in which case the resulting
ε is reported. A target ε is also the budget: a site (local DP) or the server (central DP)
refuses a round that would take ε past it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from hydra.utils import instantiate
from omegaconf import DictConfig

#: Precision of the noise calibration (ε of the plan is within this below the target).
EPSILON_TOLERANCE = 0.01


#: Words every budget refusal carries (for a person reading the logs).
BUDGET_EXHAUSTED = "privacy budget exhausted"
#: The reason code of a site's decline for its budget (task.constants.DECLINE_RECORD).
BUDGET_DECLINE = "privacy-budget"


class BudgetExhausted(RuntimeError):
    """A round would take a site's (or the federation's) ε past its budget."""


def _check_common(epsilon: float | None, delta: float, noise_multiplier: float | None) -> None:
    if epsilon is None and noise_multiplier is None:
        raise ValueError("privacy: set epsilon (a target and budget) or noise_multiplier")
    if epsilon is not None and not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"privacy.epsilon={epsilon} must be a positive finite number")
    if not 0 < delta < 1:
        raise ValueError(f"privacy.delta={delta} must be in (0, 1)")
    if noise_multiplier is not None and not noise_multiplier > 0:
        raise ValueError(f"privacy.noise_multiplier={noise_multiplier} must be positive")


def calibrate(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: tuple[tuple[float, float, int], ...] = (),
) -> float:
    """The smallest noise multiplier (to ``EPSILON_TOLERANCE``) with ε ≤ ``epsilon`` after
    ``steps`` steps at ``sample_rate`` (Opacus's RDP search), on top of the mechanisms in
    ``prior`` (``(noise multiplier, sample rate, steps)`` entries, spent as well)."""
    if steps < 1:
        raise ValueError(f"cannot calibrate noise for {steps} planned steps")
    if prior:
        return _calibrate_after(epsilon, delta, sample_rate, steps, prior)
    # Imported here, not with the module: see task.privacy.dpsgd.
    from opacus.accountants.utils import get_noise_multiplier

    try:
        sigma = get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
            epsilon_tolerance=EPSILON_TOLERANCE,
        )
    except ValueError as err:  # Opacus: "The privacy budget is too low."
        raise ValueError(
            f"privacy.epsilon={epsilon} cannot be reached at delta={delta} with {steps} steps "
            f"at sample rate {sample_rate:.4g}: {err}"
        ) from err
    return float(sigma)


def _calibrate_after(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: tuple[tuple[float, float, int], ...],
) -> float:
    """:func:`calibrate` with earlier mechanisms: a bisection on σ, as Opacus's, over the
    RDP composition of ``prior`` and the planned steps."""
    from task.privacy.accountant import Accountant

    def spent(sigma: float) -> float:
        return Accountant([*prior, (sigma, sample_rate, steps)]).epsilon(delta)

    floor = Accountant(list(prior)).epsilon(delta)
    if floor >= epsilon:
        raise ValueError(
            f"privacy.epsilon={epsilon} cannot be reached at delta={delta}: the feature "
            f"calibration alone spends ε={floor:.3f}"
        )
    low, high = 0.0, 10.0
    while spent(high) > epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise ValueError(f"privacy.epsilon={epsilon} cannot be reached at delta={delta}")
    while epsilon - spent(high) > EPSILON_TOLERANCE:
        mid = (low + high) / 2
        low, high = (mid, high) if spent(mid) > epsilon else (low, mid)
    return float(high)


@dataclass(frozen=True)
class NoPrivacy:
    """``privacy=none``: no formal guarantee (secure aggregation still hides updates)."""

    name: str = "none"
    #: Whether each site keeps its own privacy ledger (local DP: it accounts for itself).
    site_accounting: ClassVar[bool] = False

    def secure_options(self, secure: bool) -> dict:
        """Secure aggregation's settings this option needs (none)."""
        return {}

    def check_network(self, model, in_shape: tuple[int, ...]) -> None:
        """Any network trains without DP."""


@dataclass(frozen=True)
class LocalDP:
    """``privacy=local_dp``: DP-SGD at each site, example-level (ε, δ) per site.

    Args:
        epsilon: target ε over the planned rounds, and the site's budget; None: no budget
            (then ``noise_multiplier`` is required and ε is only reported).
        delta: δ of the guarantee; should be below 1 / (examples at the site).
        noise_multiplier: fixed σ instead of calibrating it from ``epsilon``.
        max_grad_norm: per-sample gradient clipping bound C.
        calibration_noise: σ of the one Gaussian release of a site's feature moments, for
            networks that standardise with them (``model=dp_scatternet``; see
            :mod:`task.federation.calibration`); None: the σ whose release alone spends
            ``calibration_share`` of ``epsilon`` (DP-SGD's σ then fits the rest).
        calibration_share: see ``calibration_noise``. The default 0.72 gives σ ≈ 2 at
            ε = 3, the best of the settings probed there (σ 2, 3, 5).
        calibration_clip: clipping bound of each example's moment vector, in units of
            ``sqrt(features)`` (the norm of its first half after GroupNorm).
    """

    epsilon: float | None = 3.0
    delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    calibration_noise: float | None = None
    calibration_share: float = 0.72
    calibration_clip: float = 2.0
    name: str = "local_dp"
    site_accounting: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_common(self.epsilon, self.delta, self.noise_multiplier)
        if not self.max_grad_norm > 0:
            raise ValueError(f"privacy.max_grad_norm={self.max_grad_norm} must be positive")
        if self.calibration_noise is not None and not self.calibration_noise > 0:
            raise ValueError(f"privacy.calibration_noise={self.calibration_noise} must be positive")
        if not 0 < self.calibration_share < 1:
            raise ValueError(
                f"privacy.calibration_share={self.calibration_share} must be in (0, 1)"
            )
        if not self.calibration_clip > 0:
            raise ValueError(f"privacy.calibration_clip={self.calibration_clip} must be positive")

    def secure_options(self, secure: bool) -> dict:
        """Secure aggregation's settings this option needs (none: each site's DP-SGD
        holds without it)."""
        return {}

    def check_network(self, model, in_shape: tuple[int, ...]) -> None:
        """A network Opacus cannot train, or whose feature calibration alone spends the
        budget, fails before the first round, not at the sites."""
        from task.federation.calibration import has_calibration
        from task.privacy.dpsgd import check_per_example_gradients

        check_per_example_gradients(model, in_shape)
        if has_calibration(model):
            self.calibration_history()

    def calibration_sigma(self) -> float:
        """σ of the feature moments' release: given, or spending ``calibration_share`` of
        ``epsilon`` on its own."""
        if self.calibration_noise is not None:
            return float(self.calibration_noise)
        if self.epsilon is None:
            raise ValueError(
                "privacy.calibration_noise is needed when privacy.epsilon is null: the "
                "network releases its feature moments once (model=dp_scatternet)"
            )
        return calibrate(self.calibration_share * float(self.epsilon), self.delta, 1.0, 1)

    def calibration_history(self) -> tuple[tuple[float, float, int], ...]:
        """The feature calibration as accountant entries: one Gaussian mechanism, every
        example included (sample rate 1). Raises ``ValueError`` when it alone would pass
        ``epsilon`` (a given ``calibration_noise`` too small)."""
        history = ((self.calibration_sigma(), 1.0, 1),)
        if self.epsilon is not None:
            from task.privacy.accountant import Accountant

            alone = Accountant(list(history)).epsilon(self.delta)
            if alone >= self.epsilon:
                raise ValueError(
                    f"privacy.epsilon={self.epsilon} cannot be reached at delta={self.delta}: "
                    f"the feature calibration alone (privacy.calibration_noise="
                    f"{history[0][0]:g}) spends ε={alone:.3f}"
                )
        return history

    def noise_for(
        self, sample_rate: float, planned_steps: int, *, calibration: bool = False
    ) -> float:
        """σ for a site: given, or calibrated so the planned steps (after the feature
        calibration, when the network has one) spend ``epsilon``."""
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        prior = self.calibration_history() if calibration else ()
        return calibrate(float(self.epsilon), self.delta, sample_rate, planned_steps, prior)


@dataclass(frozen=True)
class CentralDP:
    """``privacy=central_dp``: site-level (ε, δ) for the federation, noise on the sum.

    Each site clips its model update to L2 norm ``clip_norm`` and adds Gaussian noise of
    standard deviation ``σ · clip_norm / sqrt(min_sites)`` before secure aggregation, so
    any sum of at least ``min_sites`` sites carries noise of at least ``σ · clip_norm``,
    and no site's own update is ever revealed. One round is one Gaussian mechanism on the
    sum (sensitivity ``clip_norm``: adding or removing one site); no amplification by
    site sampling is claimed.

    Args:
        epsilon: target ε over ``federation.num_rounds`` rounds, and the budget.
        delta: δ of the site-level guarantee.
        noise_multiplier: fixed σ instead of calibrating it.
        clip_norm: bound on each site's update norm.
        min_sites: fewest sites in any revealed sum (the server abandons a round below it).
    """

    epsilon: float | None = 3.0
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    min_sites: int = 2
    name: str = "central_dp"
    site_accounting: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_common(self.epsilon, self.delta, self.noise_multiplier)
        if not self.clip_norm > 0:
            raise ValueError(f"privacy.clip_norm={self.clip_norm} must be positive")
        if int(self.min_sites) != self.min_sites or self.min_sites < 1:
            raise ValueError(f"privacy.min_sites={self.min_sites} must be a positive integer")

    def secure_options(self, secure: bool) -> dict:
        """Secure aggregation's settings: it is required (each site adds only its share of
        the noise, so the server must never see an update in the clear), and a sum of
        fewer than ``min_sites`` sites stays hidden."""
        if not secure:
            raise ValueError(
                "privacy=central_dp needs secure=smpc: each site adds only its share of the "
                "noise, so the server must never see an update in the clear"
            )
        return {"min_sites": self.min_sites}

    def check_network(self, model, in_shape: tuple[int, ...]) -> None:
        """Any network: the noise goes on the whole update."""

    def noise_for(self, num_rounds: int) -> float:
        """σ on the sum: given, or calibrated so ``num_rounds`` rounds spend ``epsilon``."""
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        return calibrate(float(self.epsilon), self.delta, 1.0, num_rounds)

    def site_noise_std(self, num_rounds: int) -> float:
        """Standard deviation of the noise one site adds to each coordinate."""
        return self.noise_for(num_rounds) * self.clip_norm / math.sqrt(self.min_sites)

    def effective_noise(self, num_rounds: int, n_sites: int) -> float:
        """σ of a sum of ``n_sites`` noisy updates (each site's share adds up)."""
        if n_sites < self.min_sites:
            raise ValueError(f"a sum of {n_sites} sites is below min_sites={self.min_sites}")
        return self.noise_for(num_rounds) * math.sqrt(n_sites / self.min_sites)


Privacy = NoPrivacy | LocalDP | CentralDP


def privacy_of(cfg: DictConfig) -> Privacy:
    """The configured privacy option (``cfg.privacy``), checked."""
    privacy = instantiate(cfg.privacy)
    if not isinstance(privacy, NoPrivacy | LocalDP | CentralDP):
        raise ValueError(f"privacy._target_ builds {type(privacy).__name__}, not a privacy option")
    return privacy
