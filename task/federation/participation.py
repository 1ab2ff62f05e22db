"""What each site did in each recorded round, and the ε it had spent (plain dicts only).

Read from ``history.json`` entries (or the recorder's rows as they are written) by the
run's report and by the consortium's dashboard, so both say the same about every site.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: What a site did in a round.
PARTS = ("absent", "trained", "declined", "rejected")
#: The name under which central DP's ε (the federation's, not a site's) is shown.
FEDERATION = "federation"


def site_names(history: Sequence[dict[str, Any]]) -> list[str]:
    """Every site the history names: replied, declined, was refused or reported ε. A node
    whose reply failed sends no name and is counted among the round's failures only."""
    names: set[str] = set()
    for entry in history:
        names |= set(entry.get("sites", {})) | set(entry.get("declined", {}))
        names |= set(entry.get("rejected", {})) - {"secure-sum"}
        names |= set(entry.get("privacy", {}).get("sites", {}))
    return sorted(names)


def site_part(entry: dict[str, Any], site: str) -> str:
    """What ``site`` did in the round ``entry`` records (one of :data:`PARTS`): a site whose
    update was refused before aggregation did not take part, whatever it sent."""
    if site in entry.get("rejected", {}):
        return "rejected"
    if site in entry.get("declined", {}):
        return "declined"
    if "train" in entry.get("sites", {}).get(site, {}):
        return "trained"
    return "absent"


def round_epsilons(entry: dict[str, Any]) -> dict[str, float]:
    """{site: ε spent after the round}: the coordinator's tally under local DP (each site's
    last report), else the sites' reports in the round itself; central DP's ε under
    :data:`FEDERATION`."""
    privacy = entry.get("privacy", {})
    reported = {
        site: kinds["privacy"]["epsilon"]
        for site, kinds in entry.get("sites", {}).items()
        if "epsilon" in kinds.get("privacy", {})
    }
    eps = dict(privacy.get("sites", reported))
    if "epsilon" in privacy:
        eps[FEDERATION] = privacy["epsilon"]
    return {site: float(e) for site, e in eps.items() if e is not None}


def epsilon_series(history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{site (or :data:`FEDERATION`): [(round, ε)]} over the history."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        for site, eps in round_epsilons(entry).items():
            series.setdefault(site, []).append((entry["round"], eps))
    return series
