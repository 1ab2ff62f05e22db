"""Our ε against Google's dp-accounting, at the settings local DP runs: ``python -m
scripts.check_accounting``.

For each target ε (default 1, 3, 8) the local-DP recipe (``privacy=local_dp``: the default
rounds, batch and local work, the simulated sites' training splits) is planned as a site
plans it (:func:`task.privacy.ledger.plan_round`), and the history the site spends is
accounted by the project's :class:`task.privacy.Accountant` (Opacus's RDP analysis) and by
dp-accounting's ``RdpAccountant`` (``PoissonSampledDpEvent`` of ``GaussianDpEvent``,
composed), once at Opacus's RDP orders and once at dp-accounting's own, after every round
(as a site reports ε). Two histories: what a ``dp_scatternet`` site spends (the one release
of its feature moments, sample rate 1, then DP-SGD) and plain DP-SGD (a network without
moments, its σ calibrated without the release). At the order where our ε is reached, the
RDP of one DP-SGD step is also computed by numerical integration (the exact value) to show
which side a difference comes from. Writes ``check_accounting.json`` with the machine's
facts.

dp-accounting is a development dependency (``pip install -e '.[dev]'``), imported here only.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig

from task.config import compose_config
from task.constants import REPO_ROOT
from task.evaluation.report import write_benchmark
from task.privacy import Accountant, LocalDP, privacy_of
from task.privacy.ledger import RoundPlan, plan_round
from task.runtime.machine import machine_facts

EPSILONS = (1.0, 3.0, 8.0)
Entry = tuple[float, float, int]

#: dp-accounting's warning when its series for a fractional order does not converge (it
#: then leaves the order out of the ε it reports).
NOT_CONVERGED = re.compile(r"_compute_log_a_frac failed to converge.*alpha=([0-9]+(?:\.[0-9]+)?)")


def _dp_accounting():
    try:
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError as err:
        raise SystemExit(
            "scripts.check_accounting needs dp-accounting (Google's DP accounting library): "
            "pip install dp-accounting, or the project's dev extra: pip install -e '.[dev]'"
        ) from err
    return dp_accounting, rdp_privacy_accountant


@contextmanager
def _excluded_orders() -> Iterator[set[float]]:
    """The orders dp-accounting leaves out (its warnings, logged through absl's logger, are
    collected here instead of printed once per order and round)."""
    seen: set[float] = set()

    def keep(record: logging.LogRecord) -> bool:
        match = NOT_CONVERGED.search(record.getMessage())
        if match:
            seen.add(float(match.group(1)))
        return match is None

    absl = logging.getLogger("absl")
    absl.addFilter(keep)
    try:
        yield seen
    finally:
        absl.removeFilter(keep)


def _event(sigma: float, q: float):
    dp_accounting, _ = _dp_accounting()
    event = dp_accounting.GaussianDpEvent(sigma)
    return event if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, event)


def exact_rdp(sigma: float, q: float, order: float) -> float:
    """RDP at ``order`` of one Poisson-subsampled Gaussian step (sensitivity 1, the
    add-or-remove-one relation), by numerical integration of
    ``E_{z~N(0,σ²)}[((1-q) + q·exp((2z-1)/(2σ²)))^order]``."""
    from scipy import integrate, stats

    def integrand(z: float) -> float:
        log_ratio = math.log1p(q * math.expm1((2 * z - 1) / (2 * sigma**2)))
        return math.exp(stats.norm.logpdf(z, scale=sigma) + order * log_ratio)

    # the integrand's mass lies between the two Gaussians and, for large orders, near
    # order·1 (the tilted mean): integrate over a range wide enough for both
    lo, hi = -40 * sigma, 40 * sigma + order
    total, _ = integrate.quad(integrand, lo, hi, points=[0.0, 0.5, 1.0, float(order)], limit=500)
    return math.log(total) / (order - 1)


def _plan(settings: LocalDP, cfg: DictConfig, n_train: int, release: bool) -> RoundPlan:
    """The round a site of ``n_train`` training examples plans at ``settings``."""
    fed = cfg.federation
    return plan_round(
        settings,
        n_train=n_train,
        batch_size=int(cfg.train.batch_size),
        local_steps=fed.local_steps,
        local_epochs=int(fed.local_epochs),
        num_rounds=int(fed.num_rounds),
        calibration=release,
    )


def _accountants(rdp: ModuleType, prior: list[Entry]) -> tuple[Accountant, dict[str, Any]]:
    """Ours and dp-accounting's (at Opacus's orders and at its own), each having spent
    ``prior``."""
    opacus_orders = list(Accountant().opacus.DEFAULT_ALPHAS)
    ours = Accountant(prior)
    references = {
        "opacus_orders": rdp.RdpAccountant(orders=opacus_orders),
        "default_orders": rdp.RdpAccountant(),
    }
    for reference in references.values():
        for entry_sigma, entry_q, steps in prior:
            reference.compose(_event(entry_sigma, entry_q), steps)
    return ours, references


def _rounds(
    plan: RoundPlan, ours: Accountant, references: dict[str, Any], delta: float
) -> tuple[list[dict[str, float]], set[float]]:
    """ε after every planned round by each accountant, and the orders dp-accounting left
    out on the way."""
    sigma, q = plan.noise_multiplier, plan.sample_rate
    rounds: list[dict[str, float]] = []
    with _excluded_orders() as excluded:
        for _ in range(plan.planned_rounds):
            ours.step(sigma, q, plan.steps)
            row = {"ours": ours.epsilon(delta)}
            for key, reference in references.items():
                reference.compose(_event(sigma, q), plan.steps)
                row[key] = float(reference.get_epsilon(delta))
            rounds.append(row)
    return rounds, excluded


def _one_step_rdp(rdp: ModuleType, ours: Accountant, sigma: float, q: float, delta: float) -> dict:
    """Which side a difference comes from: one step's RDP at the order our ε is reached
    at, exact and by each accountant."""
    from opacus.accountants.analysis.rdp import compute_rdp

    _, order = ours.opacus.get_privacy_spent(delta=delta)
    one = rdp.RdpAccountant(orders=[float(order)])
    one.compose(_event(sigma, q))
    return {
        "order": float(order),
        "exact": exact_rdp(sigma, q, float(order)),
        "ours": float(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=[order])[0]),
        "dp_accounting": float(one._rdp[0]),  # its per-order RDP has no public accessor
    }


def _gap(rounds: list[dict[str, float]], key: str) -> dict[str, float]:
    """``key``'s ε minus ours: after the last round, and the largest in magnitude (with
    its round)."""
    diffs = [r[key] - r["ours"] for r in rounds]
    worst = max(range(len(diffs)), key=lambda i: abs(diffs[i]))
    return {"final": diffs[-1], "largest": diffs[worst], "largest_round": worst + 1}


def compare(settings: LocalDP, cfg: DictConfig, n_train: int, *, release: bool) -> dict[str, Any]:
    """One site's planned history at ``settings``, accounted by both, round by round."""
    _, rdp = _dp_accounting()
    plan = _plan(settings, cfg, n_train, release)
    sigma, q, delta = plan.noise_multiplier, plan.sample_rate, settings.delta
    prior = list(settings.calibration_history()) if release else []
    ours, references = _accountants(rdp, prior)
    alone = {"ours": ours.epsilon(delta) if prior else None}
    alone |= {k: r.get_epsilon(delta) if prior else None for k, r in references.items()}
    rounds, excluded = _rounds(plan, ours, references, delta)
    step_rdp = _one_step_rdp(rdp, ours, sigma, q, delta)
    return {
        "target_epsilon": settings.epsilon,
        "delta": delta,
        "n_train": n_train,
        "release": prior[0] if prior else None,
        "release_alone_epsilon": alone,
        "dp_sgd": {
            "noise_multiplier": sigma,
            "sample_rate": q,
            "steps_per_round": plan.steps,
            "rounds": plan.planned_rounds,
        },
        "epsilon": rounds[-1],
        # dp-accounting's ε minus ours: after the last round, and the largest in magnitude
        # over the rounds (with its round)
        "difference": {key: _gap(rounds, key) for key in references},
        "optimal_order_rdp_of_one_step": step_rdp,
        "dp_accounting_excluded_orders": sorted(excluded),
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "check_accounting")
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument(
        "--n-train",
        type=int,
        nargs="+",
        help="training examples per site (default: the simulated sites' training splits)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of privacy=local_dp")
    args = parser.parse_args(argv)
    _, rdp = _dp_accounting()  # fail before any work when it is missing
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(["privacy=local_dp", *args.overrides])
    base = privacy_of(cfg)
    if not base.site_accounting:  # the sites' own ledgers are what this script checks
        raise SystemExit(f"privacy={base.name}: scripts.check_accounting checks local DP")
    sizes = args.n_train
    if sizes is None:
        from task.data.sites import partition_site

        n = int(cfg.federation.num_sites)
        sizes = [len(partition_site(cfg, i, n).splits.train) for i in range(n)]
    rows = [
        compare(dataclasses.replace(base, epsilon=eps), cfg, size, release=release)
        for eps in args.epsilons
        for size in sorted(set(sizes))
        for release in (True, False)
    ]
    table = [
        {
            "epsilon": r["target_epsilon"],
            "n_train": r["n_train"],
            "history": "release + DP-SGD" if r["release"] else "DP-SGD",
            "ours": round(r["epsilon"]["ours"], 6),
            **{
                f"largest_diff_{key}": float(f"{d['largest']:.2g}")
                for key, d in r["difference"].items()
            },
        }
        for r in rows
    ]
    result = {
        "machine": machine_facts(),
        "versions": {"opacus": version("opacus"), "dp-accounting": version("dp-accounting")},
        "site_training_examples": sizes,
        "opacus_orders": list(Accountant().opacus.DEFAULT_ALPHAS),
        "dp_accounting_default_orders": list(rdp.DEFAULT_RDP_ORDERS),
        "table": table,
        "rows": rows,
    }
    write_benchmark(result, args.out / "check_accounting.json", table)
    return result


if __name__ == "__main__":
    main()
