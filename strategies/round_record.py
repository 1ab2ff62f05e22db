"""What one federated round produced, per site and pooled, as the coordinator records it.

The strategy wrapper fills a :class:`RoundRecord` from the replies of each round; the
server's recorder writes it to the history, the dashboard and the checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from flwr.app import Message, MetricRecord

from task.constants import DECLINE_RECORD, SITE_RECORD

log = logging.getLogger(__name__)


def site_name(msg: Message) -> str:
    record = msg.content.config_records.get(SITE_RECORD)
    if record is not None and "name" in record:
        return str(record["name"])
    return f"node-{msg.metadata.src_node_id}"


def plain(metrics: MetricRecord | None) -> dict[str, Any]:
    return {} if metrics is None else {k: v for k, v in metrics.items()}


def public_site_facts(msg: Message) -> dict[str, Any]:
    """What the site record says besides the site's name (its ε under local DP)."""
    record = msg.content.config_records.get(SITE_RECORD)
    return {} if record is None else {k: v for k, v in record.items() if k != "name"}


class FederationEnded(Exception):
    """Raised by a ``should_stop`` check: the federation ends before its last round."""


@dataclass
class RoundRecord:
    """What one round produced, for the history, the dashboard and the checkpoint."""

    round: int
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=lambda: {"train": 0, "evaluate": 0})
    #: The reasons of the round's failed training replies, as the sites gave them.
    train_errors: list[str] = field(default_factory=list)
    #: Training replies refused before aggregation: {site: reason}.
    rejected: dict[str, str] = field(default_factory=dict)
    #: Sites that declined the round (no update sent): {site: reason code}.
    declined: dict[str, str] = field(default_factory=dict)
    #: Secure aggregation's key stages: {stage: wall seconds over the round's sums}.
    secure_seconds: dict[str, float] = field(default_factory=dict)
    #: Wall seconds of the round's phases (:class:`PhaseClock`).
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "train": self.train,
            "evaluate": self.evaluate,
            "sites": self.sites,
            "failures": self.failures,
            "rejected": self.rejected,
            "declined": self.declined,
            **({"secure_seconds": self.secure_seconds} if self.secure_seconds else {}),
            **({"phase_seconds": self.phase_seconds} if self.phase_seconds else {}),
        }


class PhaseClock:
    """The wall seconds of a round's phases, as the strategy sees them: ``train`` from the
    training messages' going out to the replies' arrival (the sites' local training and the
    wire), ``aggregate`` the aggregation itself (with ``secure=smpc`` the protocol's further
    message rounds), ``evaluate`` the sites' validation and its wire.

    Why: a round's wall time is compared with a plain loop training the same images
    (``scripts.bench_device``), and the phases say where the rest goes.
    """

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def start(self, phase: str) -> None:
        self._started[phase] = perf_counter()

    def stop(self, phase: str, record: RoundRecord) -> None:
        """File the seconds since ``start(phase)`` in ``record`` (nothing if not started)."""
        started = self._started.pop(phase, None)
        if started is not None:
            record.phase_seconds[phase] = perf_counter() - started


def decline_of(msg: Message) -> str | None:
    """The reason code of a reply that declines the round, or None."""
    record = msg.content.config_records.get(DECLINE_RECORD)
    return None if record is None else str(record.get("reason", "unknown"))


def record_declines(declines: list[Message], kind: str, record: RoundRecord) -> None:
    """File each declining reply's reason under its site, with a warning naming it."""
    for msg in declines:
        reason = decline_of(msg)
        record.declined[site_name(msg)] = reason
        detail = msg.content.config_records[DECLINE_RECORD].get("detail", "")
        log.warning(
            "round %d %s: %s declined (%s): %s", record.round, kind, site_name(msg), reason, detail
        )


def record_replies(
    replies: list[Message],
    valid: list[Message],
    kind: str,
    record: RoundRecord,
    norms: dict[int, float],
) -> None:
    """Count and log the failed ``replies``; file each ``valid`` reply's metrics (and its
    update norm, by ``id(msg)`` in ``norms``) and public site facts under its site."""
    for msg in replies:
        if msg.has_error():
            record.failures[kind] += 1
            if kind == "train":
                record.train_errors.append(str(msg.error.reason))
            log.warning(
                "round %d %s: node %d failed: %s",
                record.round,
                kind,
                msg.metadata.src_node_id,
                msg.error.reason,
            )
    for msg in valid:
        metrics = next(iter(msg.content.metric_records.values()), None)
        site = record.sites.setdefault(site_name(msg), {})
        site[kind] = plain(metrics)
        if id(msg) in norms:  # plaintext only: what to set federation.max_update_norm by
            site[kind]["update-norm"] = norms[id(msg)]
        facts = public_site_facts(msg)
        if facts:
            site["privacy"] = facts
