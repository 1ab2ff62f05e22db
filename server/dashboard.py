"""One round as the consortium's dashboard shows it (the ``logger`` group's wandb run).

Keys, one series each over the rounds:

* ``global/<train_|val_><metric>``: the pooled figures (secure sums under secure=smpc);
* ``global/failures_<kind>``, ``global/rejected``, ``global/declined``, ``global/round_seconds``;
* ``site/<site>/participated`` (1 when the site's update went into the round's aggregate),
  ``site/<site>/declined`` and ``site/<site>/rejected`` (0 / 1);
* ``privacy/epsilon/<site>``: ε the site had spent after the round (local DP), and
  ``privacy/epsilon/federation`` under central DP;
* ``secagg/<stage>_seconds``: wall time of secure aggregation's key stages in the round;
* ``<site>/<kind>_<metric>``: what a site sent in the clear (none under secure aggregation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from task.federation.participation import round_epsilons, site_part


def dashboard_row(entry: dict[str, Any], flat: dict[str, Any], sites: Sequence[str]) -> dict:
    """The dashboard's numbers for one history ``entry``; ``flat`` is its pooled row
    (:func:`server.recorder.flat_row`), ``sites`` every site the federation has named."""
    row: dict[str, Any] = {f"global/{k}": v for k, v in flat.items() if k != "round"}
    failures = entry.get("failures", {})
    row |= {f"global/failures_{kind}": n for kind, n in failures.items()}
    row["global/rejected"] = len(entry.get("rejected", {}))
    row["global/declined"] = len(entry.get("declined", {}))
    if "seconds" in entry:
        row["global/round_seconds"] = entry["seconds"]
    for site in sites:
        part = site_part(entry, site)
        row[f"site/{site}/participated"] = int(part == "trained")
        row[f"site/{site}/declined"] = int(part == "declined")
        row[f"site/{site}/rejected"] = int(part == "rejected")
    for site, eps in round_epsilons(entry).items():
        row[f"privacy/epsilon/{site}"] = eps
    if "epsilon" in entry.get("privacy", {}):  # the name the dashboard has always had
        row["global/privacy_epsilon"] = entry["privacy"]["epsilon"]
    for stage, seconds in entry.get("secure_seconds", {}).items():
        row[f"secagg/{stage}_seconds"] = seconds
    for site, kinds in entry.get("sites", {}).items():
        for kind, metrics in kinds.items():
            for key, value in metrics.items():
                if isinstance(value, int | float):
                    row[f"{site}/{kind}_{key}"] = value
    return row
