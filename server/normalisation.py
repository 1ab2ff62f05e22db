"""PriMIA's first step: the federation's intensity mean and std, by secure sum.

Every site reports the mean and mean square of its training images' intensities (before
normalisation) with its image count; with ``secure=smpc`` only their sums are revealed. The
server turns them into the federation's mean and std, which then replace the configured
``transforms.norm_mean`` / ``norm_std`` at every site and for the server's test split.
"""

from __future__ import annotations

import logging
import math

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from strategies.secure import SecureAggregation

log = logging.getLogger(__name__)

MESSAGE_TYPE = "query.intensity"


def _plaintext_means(replies: list[Message]) -> dict[str, float] | None:
    metrics = [r.content["metrics"] for r in replies if not r.has_error()]
    n = sum(float(m["num-examples"]) for m in metrics)
    if not metrics or n == 0:
        return None
    return {
        key: sum(float(m[key]) * float(m["num-examples"]) for m in metrics) / n
        for key in ("mean", "mean-sq")
    }


def federation_intensity(
    aggregation: Strategy, grid: Grid, min_sites: int, timeout: float
) -> tuple[float, float]:
    """``(mean, std)`` of the intensities over all sites' training images."""
    sample_nodes(grid, min_sites, min_sites)  # waits until enough sites are connected
    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord({})}),
            message_type=MESSAGE_TYPE,
            dst_node_id=node,
        )
        for node in grid.get_node_ids()
    ]
    secure = isinstance(aggregation, SecureAggregation)
    if secure:
        means = aggregation.query_mean(grid, messages, "intensity", timeout=timeout)
    else:
        means = _plaintext_means(list(grid.send_and_receive(messages, timeout=timeout)))
    if means is None:
        raise RuntimeError(
            "the federation's intensity statistics could not be computed: too few sites answered"
        )
    mean = means["mean"]
    std = math.sqrt(max(means["mean-sq"] - mean**2, 0.0))
    how = "secure sum" if secure else "plaintext sum"
    log.info("federation intensity: mean %.5f, std %.5f (%s)", mean, std, how)
    return mean, std
