"""One mechanism's privacy ledger: Opacus's RDP accountant, saved to disk after every round.

Flower's Opacus example builds a new ``PrivacyEngine`` each round, so ε silently restarts
at zero. Here the accountant's history (``(noise multiplier, sample rate, steps)``
entries) is the state: it is loaded before a round, stepped by Opacus's optimizer hook
during the round, and written back atomically after it. A restarted site (or server)
continues from the file, so ε only grows. One-off releases composed into the same history
(a site's feature moments) are counted apart, so that the steps of the iterated mechanism
(DP-SGD) can be told from them.

Opacus is imported when an accountant is built, not with this module (see
:mod:`task.privacy.dpsgd`).
"""

from __future__ import annotations

import json
from pathlib import Path

from task.runtime.atomic import write_text_atomic

#: Format tag of the saved ledger.
LEDGER_VERSION = 1


class Accountant:
    """RDP accounting of a subsampled Gaussian mechanism over its whole history.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` entries already spent.
        releases: how many of the history's steps were one-off releases (:meth:`release`)
            rather than steps of the iterated mechanism. Equal entries merge in the history,
            so the count is kept apart from it.
    """

    def __init__(
        self, history: list[tuple[float, float, int]] | None = None, releases: int = 0
    ) -> None:
        from opacus.accountants import RDPAccountant

        self.opacus = RDPAccountant()
        for sigma, q, steps in history or []:
            self.step(sigma, q, steps)
        if not 0 <= int(releases) <= self.steps or int(releases) != releases:
            raise ValueError(f"releases={releases!r} must be an integer in [0, {self.steps}]")
        self.releases = int(releases)

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(float(s), float(q), int(n)) for s, q, n in self.opacus.history]

    @property
    def steps(self) -> int:
        """Every accounted application, releases included."""
        return sum(n for _, _, n in self.history)

    @property
    def iterated_steps(self) -> int:
        """The accounted applications that were not releases (DP-SGD's steps at a site)."""
        return self.steps - self.releases

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` applications of the mechanism."""
        if noise_multiplier <= 0 or not 0 < sample_rate <= 1 or steps < 0:
            raise ValueError(
                f"cannot account noise_multiplier={noise_multiplier}, "
                f"sample_rate={sample_rate}, steps={steps}"
            )
        if steps == 0:
            return
        h = self.opacus.history
        if h and h[-1][0] == noise_multiplier and h[-1][1] == sample_rate:
            h[-1] = (noise_multiplier, sample_rate, h[-1][2] + steps)
        else:
            h.append((noise_multiplier, sample_rate, steps))

    def release(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record a one-off release (``steps`` applications): composed like any step,
        counted in :attr:`releases`, not in :attr:`iterated_steps`."""
        self.step(noise_multiplier, sample_rate, steps)
        self.releases += steps

    def epsilon(self, delta: float) -> float:
        """ε at ``delta`` for everything spent so far (0 before the first step)."""
        if not self.opacus.history:
            return 0.0
        return float(self.opacus.get_epsilon(delta))

    def epsilon_after(
        self, delta: float, noise_multiplier: float, sample_rate: float, steps: int
    ) -> float:
        """ε if ``steps`` more steps were spent (the ledger itself is unchanged)."""
        trial = Accountant(self.history, self.releases)
        trial.step(noise_multiplier, sample_rate, steps)
        return trial.epsilon(delta)

    def rounds_within(
        self,
        budget: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps_per_round: int,
        limit: int,
    ) -> int:
        """How many more rounds of ``steps_per_round`` steps keep ε ≤ ``budget`` (≤ limit)."""
        trial = Accountant(self.history, self.releases)
        for done in range(limit):
            trial.step(noise_multiplier, sample_rate, steps_per_round)
            if trial.epsilon(delta) > budget:
                return done
        return limit

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the ledger atomically (a crash mid-write leaves the previous one intact)."""
        data = {
            "version": LEDGER_VERSION,
            "mechanism": "rdp",
            "history": self.history,
            "releases": self.releases,
        }
        return write_text_atomic(json.dumps(data) + "\n", path)

    @classmethod
    def load(cls, path: str | Path) -> Accountant:
        """The ledger saved at ``path``; a fresh one when no file exists yet.

        A file that exists but cannot be read is an error, never a fresh start: starting
        over would silently reset ε to zero. A file written before releases were counted
        apart has no ``releases``: read as 0 (its ε is exact; only the split of its steps
        is unknown).
        """
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            if data.get("version") != LEDGER_VERSION or data.get("mechanism") != "rdp":
                raise ValueError(f"version {data.get('version')!r}, {data.get('mechanism')!r}")
            return cls([tuple(entry) for entry in data["history"]], data.get("releases", 0))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"privacy ledger {path} is unreadable ({err}); refusing to start ε from zero"
            ) from err
