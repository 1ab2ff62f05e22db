"""The federation's sections of ``report.html``, from ``history.json``: pooled validation and
each site's part per round, ε per site per round, and what secure aggregation did."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from task.evaluation import federation_plots as fp
from task.evaluation import html_parts as h
from task.federation import participation as part

ROUND_HEADER = (
    "round",
    "val AUC",
    "val MCC",
    "val accuracy",
    "trained",
    "declined",
    "rejected",
    "failures (train / evaluate)",
    "seconds",
)


def federation_sections(history: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> list[str]:
    """The history, privacy and secure-aggregation sections; none without a history."""
    if not history:
        return []
    return [_history(history), _privacy(history, metrics), _secure(history, metrics)]


def _names(reasons: dict[str, str]) -> str:
    return "; ".join(f"{site}: {why}" for site, why in sorted(reasons.items())) or "—"


def _round_row(entry: dict[str, Any], sites: list[str]) -> tuple:
    val = entry.get("evaluate", {})
    trained = [s for s in sites if part.site_part(entry, s) == "trained"]
    failures = entry.get("failures", {})
    return (
        entry["round"],
        val.get("auc"),
        val.get("mcc"),
        val.get("accuracy"),
        f"{len(trained)} of {len(sites)}: {', '.join(trained) or '—'}",
        _names(entry.get("declined", {})),
        _names(entry.get("rejected", {})),
        f"{failures.get('train', 0)} / {failures.get('evaluate', 0)}",
        entry.get("seconds"),
    )


def _history(history: Sequence[dict[str, Any]]) -> str:
    """Pooled validation per round, who took part, and each round's row."""
    sites = part.site_names(history)
    pooled, parts = fp.pooled_figure(history), fp.participation_figure(history)
    return h.section(
        "Federation history",
        pooled and h.figure(pooled, "Pooled validation metrics per round"),
        parts and h.figure(parts, "Each site's participation per round"),
        h.table(ROUND_HEADER, [_round_row(e, sites) for e in history]),
    )


def _privacy(history: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> str:
    """ε spent per site after each round, and the run's privacy summary."""
    summary = metrics.get("privacy") or {}
    series = part.epsilon_series(history)
    if not series and summary.get("mode") in (None, "none"):
        return ""
    png = fp.epsilon_figure(history, summary.get("budget"))
    sites = sorted(series)
    rounds = sorted({r for points in series.values() for r, _ in points})
    by_round = {s: dict(points) for s, points in series.items()}
    rows = [(r, *(by_round[s].get(r) for s in sites)) for r in rounds]
    return h.section(
        "Differential privacy",
        summary and h.table(("setting", "value"), h.flat_scalars(summary)),
        png and h.figure(png, "ε per site per round"),
        rows and h.table(("round", *(f"ε {s}" for s in sites)), rows),
    )


def _secure(history: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> str:
    """The sites in each revealed sum, the sums refused, and each stage's wall time."""
    secure = metrics.get("secure")
    stages = sorted({s for e in history for s in e.get("secure_seconds", {})})
    in_sum = [
        e for e in history if "secure-sites" in {**e.get("train", {}), **e.get("evaluate", {})}
    ]
    if not (stages or in_sum or (secure and secure != "null")):
        return ""
    rows = [
        (
            e["round"],
            e.get("train", {}).get("secure-sites"),
            e.get("evaluate", {}).get("secure-sites"),
            e.get("rejected", {}).get("secure-sum", "—"),
            *(e.get("secure_seconds", {}).get(s) for s in stages),
        )
        for e in history
    ]
    header = ("round", "sites in train sum", "sites in evaluate sum", "sum refused")
    return h.section(
        "Secure aggregation",
        secure and h.note(f"protocol: {secure}"),
        h.table((*header, *(f"{s} (s)" for s in stages)), rows),
    )
