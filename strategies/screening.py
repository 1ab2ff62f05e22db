"""Plaintext aggregation's screen: training replies that must not enter the aggregate.

A reply is dropped before the inner strategy sees it when it is malformed, NaN or Inf,
holds a tensor of another shape or dtype or an extra or missing one, carries an update
beyond ``max_update_norm`` or a bad example count (:mod:`task.federation.update_check`), or metric
keys unlike the other sites'. Each is recorded with its reason in the round's
``rejected``. Under secure aggregation the replies are masked: the sites check their own
updates instead.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Message

from strategies.round_record import RoundRecord, site_name
from task.federation.update_check import (
    UpdateRejected,
    check_metrics,
    check_update,
    check_weight,
    metric_key_outliers,
    validate_max_norm,
)

log = logging.getLogger(__name__)


class UpdateScreen:
    """Checks training replies against the round's global model (``global_arrays``)."""

    def __init__(self, max_update_norm: float | None) -> None:
        self.max_update_norm = validate_max_norm(max_update_norm)
        self._global: dict[str, np.ndarray] | None = None

    def set_global(self, arrays: dict[str, np.ndarray]) -> None:
        """The global model this round's updates are checked against."""
        self._global = arrays

    def check(self, msg: Message, weight_key: str) -> float:
        """Raise :class:`UpdateRejected` unless ``msg`` may enter the aggregate; returns
        the norm of its update."""
        site = site_name(msg)
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            raise UpdateRejected(
                site,
                f"expected one ArrayRecord and one MetricRecord, got "
                f"{sorted(content.array_records)} and {sorted(content.metric_records)}",
            )
        metrics = next(iter(content.metric_records.values()))
        if weight_key not in metrics:
            raise UpdateRejected(site, f"its metrics hold no {weight_key!r}")
        check_weight(metrics[weight_key], site=site, key=weight_key)
        check_metrics(dict(metrics.items()), site=site)
        try:
            update = {k: a.numpy() for k, a in next(iter(content.array_records.values())).items()}
        except (TypeError, ValueError) as err:
            raise UpdateRejected(site, f"an array cannot be read: {err}") from err
        if self._global is None:
            raise RuntimeError("aggregate_train before configure_train: no global model")
        return check_update(update, self._global, site=site, max_norm=self.max_update_norm)

    def screen(
        self, valid: list[Message], record: RoundRecord, weight_key: str
    ) -> tuple[list[Message], dict[int, float]]:
        """The training replies that pass :mod:`task.federation.update_check`, and their update
        norms by ``id(msg)``; the others are logged and recorded in ``record.rejected``."""
        kept: list[Message] = []
        norms: dict[int, float] = {}
        for msg in valid:
            try:
                norms[id(msg)] = self.check(msg, weight_key)
            except UpdateRejected as err:
                self._reject(record, msg, str(err))
            else:
                kept.append(msg)
        odd = metric_key_outliers(
            [set(next(iter(m.content.metric_records.values())).keys()) for m in kept]
        )
        for i, reason in odd.items():
            self._reject(record, kept[i], str(UpdateRejected(site_name(kept[i]), reason)))
        return [m for i, m in enumerate(kept) if i not in odd], norms

    @staticmethod
    def _reject(record: RoundRecord, msg: Message, reason: str) -> None:
        name = site_name(msg)
        if name in record.rejected:  # two replies under one name: keep both reasons
            name = f"{name} (node {msg.metadata.src_node_id})"
        record.rejected[name] = reason
        log.warning(
            "round %d train: node %d refused before aggregation: %s",
            record.round,
            msg.metadata.src_node_id,
            reason,
        )
