"""The coordinator's view of privacy: ε per round, and when the federation must end.

Under local DP the sites account for themselves and report ε, σ and the rounds their
budget still allows, in the clear; the server records them and ends the federation when
fewer than ``federation.min_train_sites`` sites can still train. Under central DP the
server accounts the noise on each revealed sum (its own ledger, saved in ``last.pt``) and
ends the federation before a round that would pass the budget.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from omegaconf import DictConfig

from strategies.round_record import RoundRecord
from task.privacy import Accountant, CentralDP, LocalDP, NoPrivacy, Privacy
from task.privacy.settings import BUDGET_EXHAUSTED

log = logging.getLogger(__name__)


class FederationPrivacy:
    """Privacy bookkeeping of one federation, restored from a checkpoint's ``state``."""

    def __init__(self, privacy: Privacy, cfg: DictConfig, state: dict[str, Any] | None) -> None:
        self.privacy = privacy
        fed = cfg.federation
        self.num_rounds, self.num_sites = int(fed.num_rounds), int(fed.num_sites)
        self.min_train_sites = int(fed.min_train_sites)
        state = state or {}
        self.site_reports: dict[str, dict[str, Any]] = dict(state.get("sites", {}))
        # Sites that refused the last round for their budget (an error reply has no name).
        self.refusals = int(state.get("refusals", 0))
        self._history = [tuple(h) for h in state.get("history", [])]
        if privacy.name == "local_dp" and fed.secure_normalisation:
            raise ValueError(
                "federation.secure_normalisation=true sends each site's intensity moments "
                "without DP, outside privacy=local_dp's guarantee; the sites refuse it"
            )
        if isinstance(privacy, CentralDP) and privacy.min_sites > self.num_sites:
            raise ValueError(
                f"privacy.min_sites={privacy.min_sites} exceeds federation.num_sites="
                f"{self.num_sites}: no sum could ever be revealed"
            )

    @cached_property
    def accountant(self) -> Accountant:
        """The central-DP accountant, built on first use: only central DP steps it, and
        building it imports Opacus (about 1 s), which a federation without DP skips."""
        return Accountant(self._history)

    @property
    def enabled(self) -> bool:
        return not isinstance(self.privacy, NoPrivacy)

    def after_round(self, record: RoundRecord) -> dict[str, Any]:
        """Account the finished round; returns its ``privacy`` entry for the history."""
        if isinstance(self.privacy, LocalDP):
            self.refusals = sum(BUDGET_EXHAUSTED in reason for reason in record.train_errors)
            for site, kinds in record.sites.items():
                if "privacy" in kinds:
                    self.site_reports[site] = dict(kinds["privacy"])
            return {"sites": {s: r["epsilon"] for s, r in sorted(self.site_reports.items())}}
        if isinstance(self.privacy, CentralDP):
            n_sites = record.train.get("secure-sites")
            if n_sites:  # a sum was revealed this round
                sigma = self.privacy.effective_noise(self.num_rounds, int(n_sites))
                self.accountant.step(sigma, 1.0, 1)
                log.info(
                    "central DP round %d: sum of %d sites, σ=%.3f; ε=%.3f at δ=%g",
                    record.round,
                    n_sites,
                    sigma,
                    self.epsilon,
                    self.privacy.delta,
                )
            return {"epsilon": self.epsilon, "delta": self.privacy.delta, "rounds": self.spent}
        return {}

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon(self.privacy.delta)

    @property
    def spent(self) -> int:
        return self.accountant.steps

    def should_stop(self, server_round: int) -> str | None:
        """Why round ``server_round`` must not run, or None."""
        if isinstance(self.privacy, LocalDP):
            exhausted = sorted(s for s, r in self.site_reports.items() if r["rounds-left"] < 1)
            spent = max(len(exhausted), self.refusals)
            able = self.num_sites - spent
            if spent and able < self.min_train_sites:
                return (
                    f"{spent} site(s) have spent their privacy budget (ε ≤ "
                    f"{self.privacy.epsilon}; reported spent: {exhausted}, refused the last "
                    f"round: {self.refusals}); {able} site(s) could still train, fewer than "
                    f"federation.min_train_sites={self.min_train_sites}"
                )
        if isinstance(self.privacy, CentralDP) and self.privacy.epsilon is not None:
            sigma = self.privacy.noise_for(self.num_rounds)
            after = self.accountant.epsilon_after(self.privacy.delta, sigma, 1.0, 1)
            if after > self.privacy.epsilon:
                return (
                    f"central DP budget: round {server_round} would take ε from "
                    f"{self.epsilon:.3f} to {after:.3f} > {self.privacy.epsilon}"
                )
        return None

    def state(self) -> dict[str, Any]:
        """What the checkpoint keeps (restored by the constructor)."""
        return {
            "sites": self.site_reports,
            "refusals": self.refusals,
            # Only central DP steps the accountant; otherwise the history is as loaded.
            "history": [
                list(h)
                for h in (
                    self.accountant.history
                    if isinstance(self.privacy, CentralDP)
                    else self._history
                )
            ],
        }

    def summary(self, stopped: str | None) -> dict[str, Any]:
        """The ``privacy`` entry of ``metrics.json``."""
        out: dict[str, Any] = {"mode": self.privacy.name, "stopped_early": stopped}
        if isinstance(self.privacy, LocalDP):
            out["delta"], out["budget"] = self.privacy.delta, self.privacy.epsilon
            out["sites"] = {s: r["epsilon"] for s, r in sorted(self.site_reports.items())}
            out["noise_multipliers"] = {
                s: r["noise-multiplier"] for s, r in sorted(self.site_reports.items())
            }
        elif isinstance(self.privacy, CentralDP):
            out["delta"], out["budget"] = self.privacy.delta, self.privacy.epsilon
            out["epsilon"] = self.epsilon
            out["noise_multiplier"] = self.privacy.noise_for(self.num_rounds)
            out["rounds_accounted"] = self.spent
        return out
