"""A site's privacy state under local DP: its saved accountant, its plan, its budget.

The ledger file lives in the site's state folder (``state-dir`` in the node config), so
it survives restarts of the SuperNode. Before each round the site checks that the round's
steps keep ε within its budget and refuses the round otherwise; after the round it saves
the ledger and reports ε (at its δ), σ and how many more rounds its budget allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from task.privacy.accountant import Accountant
from task.privacy.dpsgd import steps_per_epoch
from task.privacy.settings import BUDGET_EXHAUSTED, BudgetExhausted, LocalDP

log = logging.getLogger(__name__)

#: File name of a site's privacy ledger in its state folder.
LEDGER_FILE = "privacy-ledger.json"


@dataclass(frozen=True)
class RoundPlan:
    """The DP-SGD work of one round at one site."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    planned_rounds: int


def plan_round(
    settings: LocalDP,
    *,
    n_train: int,
    batch_size: int,
    local_steps: int | None,
    local_epochs: int,
    num_rounds: int,
    calibration: bool = False,
) -> RoundPlan:
    """Steps per round and σ, from the planned rounds and local work (before training).

    ``calibration``: the network's feature moments are released once (round 1) and the
    planned rounds' σ leaves room for it, in every round alike."""
    if n_train < 1:
        raise ValueError("cannot plan DP-SGD for a site without training examples")
    per_epoch = steps_per_epoch(n_train, batch_size)
    steps = int(local_steps) if local_steps else int(local_epochs) * per_epoch
    sigma = settings.noise_for(1.0 / per_epoch, steps * num_rounds, calibration=calibration)
    return RoundPlan(sigma, 1.0 / per_epoch, steps, num_rounds)


class SiteLedger:
    """The accountant of one site, kept at ``state_dir / LEDGER_FILE``."""

    def __init__(self, settings: LocalDP, state_dir: str | Path, site: str) -> None:
        self.settings, self.site = settings, site
        self.path = Path(state_dir) / LEDGER_FILE
        self.accountant = Accountant.load(self.path)

    @property
    def epsilon(self) -> float:
        return self.accountant.epsilon(self.settings.delta)

    def check(self, plan: RoundPlan) -> None:
        """Raise :class:`BudgetExhausted` if ``plan``'s round would pass the budget."""
        budget = self.settings.epsilon
        if budget is None:
            return
        after = self.accountant.epsilon_after(
            self.settings.delta, plan.noise_multiplier, plan.sample_rate, plan.steps
        )
        if after > budget:
            raise BudgetExhausted(
                f"site {self.site}: {BUDGET_EXHAUSTED}: this round would take ε from "
                f"{self.epsilon:.3f} to {after:.3f} > budget {budget} (δ={self.settings.delta}); "
                "refusing to train (evaluation still served)"
            )

    def save(self) -> Path:
        return self.accountant.save(self.path)

    def report(self, plan: RoundPlan) -> dict[str, float | int]:
        """What the site tells the server (in the clear) after a round: ε at δ, σ and q of
        DP-SGD, its steps so far (``dp-steps``, the feature moments' release not among
        them), the one-off releases so far (``dp-releases``) and the rounds left."""
        budget = self.settings.epsilon
        left = (
            plan.planned_rounds
            if budget is None
            else self.accountant.rounds_within(
                budget,
                self.settings.delta,
                plan.noise_multiplier,
                plan.sample_rate,
                plan.steps,
                plan.planned_rounds,
            )
        )
        return {
            "epsilon": self.epsilon,
            "delta": self.settings.delta,
            "noise-multiplier": plan.noise_multiplier,
            "sample-rate": plan.sample_rate,
            "dp-steps": self.accountant.iterated_steps,
            "dp-releases": self.accountant.releases,
            "rounds-left": left,
        }
