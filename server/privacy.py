"""The coordinator's view of privacy: ε per round, and when the federation must end.

One class per privacy option, chosen by the option's name (:func:`federation_privacy`):
under local DP the sites account for themselves and report ε, σ and the rounds their
budget still allows, in the clear; the server records them and ends the federation when
fewer than ``federation.min_train_sites`` sites can still train. Under central DP the
server accounts the noise on each revealed sum (its own ledger, saved in ``last.pt``) and
ends the federation before a round that would pass the budget. Without DP it records
nothing.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from omegaconf import DictConfig

from strategies.round_record import RoundRecord
from task.privacy import Accountant, Privacy
from task.privacy.settings import BUDGET_DECLINE

log = logging.getLogger(__name__)


class FederationPrivacy:
    """Privacy bookkeeping of one federation, restored from a checkpoint's ``state``;
    this base class is ``privacy=none``'s: nothing to account, nothing to stop for."""

    enabled = False

    def __init__(self, privacy: Privacy, cfg: DictConfig, state: dict[str, Any] | None) -> None:
        self.option = privacy  # the option's settings (task.privacy)
        fed = cfg.federation
        self.num_rounds, self.num_sites = int(fed.num_rounds), int(fed.num_sites)
        self.min_train_sites = int(fed.min_train_sites)
        state = state or {}
        self.site_reports: dict[str, dict[str, Any]] = dict(state.get("sites", {}))
        # Sites that declined the last round for their budget.
        self.refusals = int(state.get("refusals", 0))
        self._history = [tuple(h) for h in state.get("history", [])]

    def after_round(self, record: RoundRecord) -> dict[str, Any]:
        """Account the finished round; returns its ``privacy`` entry for the history."""
        return {}

    def should_stop(self, server_round: int) -> str | None:
        """Why round ``server_round`` must not run, or None."""
        return None

    def _history_state(self) -> list[tuple]:
        return self._history

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps (restored by the constructor)."""
        return {
            "sites": self.site_reports,
            "refusals": self.refusals,
            "history": [list(h) for h in self._history_state()],
        }

    def summary(self, stopped: str | None) -> dict[str, Any]:
        """The ``privacy`` entry of ``metrics.json``."""
        return {"mode": self.option.name, "stopped_early": stopped}


class LocalDPFederation(FederationPrivacy):
    """``privacy=local_dp``: the sites' own reports, and the end of the federation when too
    few sites have budget left."""

    enabled = True

    def __init__(self, privacy: Privacy, cfg: DictConfig, state: dict[str, Any] | None) -> None:
        super().__init__(privacy, cfg, state)
        if cfg.federation.secure_normalisation:
            raise ValueError(
                "federation.secure_normalisation=true sends each site's intensity moments "
                "without DP, outside privacy=local_dp's guarantee; the sites refuse it"
            )

    def after_round(self, record: RoundRecord) -> dict[str, Any]:
        self.refusals = sum(reason == BUDGET_DECLINE for reason in record.declined.values())
        for site, kinds in record.sites.items():
            if "privacy" in kinds:
                self.site_reports[site] = dict(kinds["privacy"])
        return {"sites": {s: r["epsilon"] for s, r in sorted(self.site_reports.items())}}

    def should_stop(self, server_round: int) -> str | None:
        exhausted = sorted(s for s, r in self.site_reports.items() if r["rounds-left"] < 1)
        spent = max(len(exhausted), self.refusals)
        able = self.num_sites - spent
        if spent and able < self.min_train_sites:
            return (
                f"{spent} site(s) have spent their privacy budget (ε ≤ "
                f"{self.option.epsilon}; reported spent: {exhausted}, refused the last "
                f"round: {self.refusals}); {able} site(s) could still train, fewer than "
                f"federation.min_train_sites={self.min_train_sites}"
            )
        return None

    def summary(self, stopped: str | None) -> dict[str, Any]:
        reports = sorted(self.site_reports.items())
        return super().summary(stopped) | {
            "delta": self.option.delta,
            "budget": self.option.epsilon,
            "sites": {s: r["epsilon"] for s, r in reports},
            "noise_multipliers": {s: r["noise-multiplier"] for s, r in reports},
        }


class CentralDPFederation(FederationPrivacy):
    """``privacy=central_dp``: the server's own accountant of the noise on each revealed
    sum, and the end of the federation before a round that would pass the budget."""

    enabled = True

    def __init__(self, privacy: Privacy, cfg: DictConfig, state: dict[str, Any] | None) -> None:
        super().__init__(privacy, cfg, state)
        if privacy.min_sites > self.num_sites:
            raise ValueError(
                f"privacy.min_sites={privacy.min_sites} exceeds federation.num_sites="
                f"{self.num_sites}: no sum could ever be revealed"
            )

    @cached_property
    def accountant(self) -> Accountant:
        """Built on first use: building it imports Opacus (about 1 s)."""
        return Accountant(self._history)

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon(self.option.delta)

    @property
    def spent(self) -> int:
        return self.accountant.steps

    def after_round(self, record: RoundRecord) -> dict[str, Any]:
        n_sites = record.train.get("secure-sites")
        if n_sites:  # a sum was revealed this round
            sigma = self.option.effective_noise(self.num_rounds, int(n_sites))
            self.accountant.step(sigma, 1.0, 1)
            log.info(
                "central DP round %d: sum of %d sites, σ=%.3f; ε=%.3f at δ=%g",
                record.round,
                n_sites,
                sigma,
                self.epsilon,
                self.option.delta,
            )
        return {"epsilon": self.epsilon, "delta": self.option.delta, "rounds": self.spent}

    def should_stop(self, server_round: int) -> str | None:
        if self.option.epsilon is None:
            return None
        sigma = self.option.noise_for(self.num_rounds)
        after = self.accountant.epsilon_after(self.option.delta, sigma, 1.0, 1)
        if after > self.option.epsilon:
            return (
                f"central DP budget: round {server_round} would take ε from "
                f"{self.epsilon:.3f} to {after:.3f} > {self.option.epsilon}"
            )
        return None

    def _history_state(self) -> list[tuple]:
        return self.accountant.history

    def summary(self, stopped: str | None) -> dict[str, Any]:
        return super().summary(stopped) | {
            "delta": self.option.delta,
            "budget": self.option.epsilon,
            "epsilon": self.epsilon,
            "noise_multiplier": self.option.noise_for(self.num_rounds),
            "rounds_accounted": self.spent,
        }


#: The coordinator's bookkeeping of each privacy option, by the option's name.
TRACKERS: dict[str, type[FederationPrivacy]] = {
    "none": FederationPrivacy,
    "local_dp": LocalDPFederation,
    "central_dp": CentralDPFederation,
}


def federation_privacy(
    privacy: Privacy, cfg: DictConfig, state: dict[str, Any] | None
) -> FederationPrivacy:
    """The bookkeeping of ``privacy`` for this federation, restored from ``state``."""
    if privacy.name not in TRACKERS:
        raise ValueError(f"privacy option {privacy.name!r} has no coordinator bookkeeping")
    return TRACKERS[privacy.name](privacy, cfg, state)
