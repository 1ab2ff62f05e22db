"""Checks on one site's model update before it is aggregated (Flower-free).

A site's reply is untrusted input. One NaN or infinity poisons the weighted mean for every
site; a tensor of another shape either breaks the mean or is silently broadcast into it; a
tensor of another dtype changes what the global model is; an extra or missing tensor does
too; an update with a huge norm replaces the model in one round; a zero, negative or
non-finite example count turns FedAvg's convex combination into anything at all. Each is
caught here and named (site, tensor, value), so that the server can drop the reply, count
it and go on with the others.

Under secure aggregation the server cannot look inside an update: the site runs the same
checks on its own update before encoding it (``client/secure.py``), and the server checks
what it can, the revealed mean (``strategies/secure.py``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence, Set
from numbers import Real
from typing import Any

import numpy as np

from task.federation.settings import MAX_NORM_KEY, validate_max_norm  # noqa: F401 (the checks' bound)


class UpdateRejected(ValueError):
    """A site's update that must not be aggregated.

    Attributes:
        site: the site that sent (or, at the site itself, would have sent) the update.
        reason: why, naming the tensor and the value.
        tensor: the offending tensor, when one is to blame.
    """

    def __init__(self, site: str, reason: str, *, tensor: str | None = None) -> None:
        self.site, self.reason, self.tensor = site, reason, tensor
        super().__init__(f"update of site {site!r} rejected: {reason}")


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating)


def _first_bad(array: np.ndarray) -> str:
    """Count and first position of the non-finite values in ``array``, for an error."""
    bad = ~np.isfinite(array)
    where = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), array.shape))
    return f"{int(bad.sum())} non-finite value(s) (first: {array[where]} at index {where})"


def _squared_parts(
    update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Squared L2 norm of ``update - reference`` per floating-point tensor, in float64.

    Integer tensors (BatchNorm's ``num_batches_tracked``) are counters, not weights: they
    are left out, as central DP's clipping leaves them out.
    """
    parts = {}
    for key, ref in reference.items():
        ref = np.asarray(ref)
        if key in update and _is_float(ref):
            delta = np.asarray(update[key], dtype=np.float64) - ref.astype(np.float64)
            parts[key] = float(np.sum(delta * delta))
    return parts


def update_norm(update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``update - reference`` over all floating-point tensors together."""
    return math.sqrt(sum(_squared_parts(update, reference).values()))


def in_model_dtype(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An aggregated (float) mean as the model's ``dtype``: integer tensors (BatchNorm's
    ``num_batches_tracked``) are rounded, not truncated; 0-d stays an array."""
    mean = np.asarray(mean)
    if np.issubdtype(dtype, np.integer):
        mean = np.rint(mean)
    return np.asarray(mean, dtype=dtype)


def _names(keys: Set[str], limit: int = 5) -> str:
    shown = sorted(keys)
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(repr(k) for k in shown[:limit]) + more


def _key_difference(expected: Set[str], got: Set[str]) -> str | None:
    """``"missing ...; extra ..."`` for two sets of names, or None when they are equal."""
    missing, extra = expected - got, got - expected
    parts = [f"missing {_names(missing)}"] if missing else []
    parts += [f"extra {_names(extra)}"] if extra else []
    return "; ".join(parts) or None


def check_update(
    update: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    *,
    site: str,
    max_norm: float | None = None,
) -> float:
    """Check a site's weights against the global model they were trained from.

    The update must hold exactly the global model's tensors, each with the same shape and
    dtype, only finite values, and (when ``max_norm`` is set) lie within L2 distance
    ``max_norm`` of the global model. Returns that distance; raises :class:`UpdateRejected`
    naming the site, the tensor and the value otherwise.
    """
    difference = _key_difference(set(reference), set(update))
    if difference:
        raise UpdateRejected(site, f"tensors differ from the global model's: {difference}")
    for key, ref in reference.items():
        value, ref = np.asarray(update[key]), np.asarray(ref)
        if value.dtype != ref.dtype:
            raise UpdateRejected(
                site, f"tensor {key!r} has dtype {value.dtype}, expected {ref.dtype}", tensor=key
            )
        if value.shape != ref.shape:
            raise UpdateRejected(
                site,
                f"tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}",
                tensor=key,
            )
        if _is_float(value) and not np.all(np.isfinite(value)):
            raise UpdateRejected(site, f"tensor {key!r} holds {_first_bad(value)}", tensor=key)
    parts = _squared_parts(update, reference)
    norm = math.sqrt(sum(parts.values()))
    if max_norm is not None and norm > max_norm:
        worst = max(parts, key=parts.__getitem__)
        raise UpdateRejected(
            site,
            f"update norm {norm:.6g} exceeds {MAX_NORM_KEY}={max_norm:g} "
            f"(largest part: tensor {worst!r}, norm {math.sqrt(parts[worst]):.6g})",
            tensor=worst,
        )
    return norm


def check_weight(value: object, *, site: str, key: str = "num-examples") -> float:
    """The site's aggregation weight (its example count), which must be positive and finite.

    FedAvg divides by the sum of the weights and mixes the updates with them: a zero sum
    divides by zero, and a negative or infinite weight makes the mean leave the convex hull
    of the updates, so no norm bound on single updates would bound it.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise UpdateRejected(site, f"{key}={value!r} is not a number")
    weight = float(value)
    if not math.isfinite(weight) or weight <= 0:
        raise UpdateRejected(site, f"{key}={value!r} must be a positive finite number")
    return weight


def check_metrics(metrics: Mapping[str, Any], *, site: str) -> None:
    """Every reported metric (a number or a list of numbers) must be finite: they are
    averaged across sites, and one NaN loss would make the federation's loss NaN."""
    for key, value in metrics.items():
        values = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise UpdateRejected(site, f"metric {key!r} holds {_first_bad(values)}")


def check_range(name: str, values: np.ndarray, limit: float, *, site: str) -> None:
    """``values`` must be finite and below ``limit`` in magnitude: the fixed-point range an
    honest site encodes under secure aggregation (``mpc.secagg.fixedpoint.bound``).

    The encoder refuses such values too; checking first names the site and says that the
    site, not the protocol, refused.
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise UpdateRejected(site, f"{name!r} holds {_first_bad(values)}", tensor=name)
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak >= limit:
        raise UpdateRejected(
            site,
            f"{name!r} reaches magnitude {peak:.6g}, outside the fixed-point range "
            f"(|value| < {limit:.6g}); refusing to encode rather than clip",
            tensor=name,
        )


def metric_key_outliers(key_sets: Sequence[Set[str]]) -> dict[int, str]:
    """Indices of the replies whose metric names differ from the most common set, with why.

    Flower's FedAvg refuses to aggregate a round whose replies name different metrics, so
    one site sending an extra or missing metric would otherwise cost every site the round.
    Ties go to the set seen first (replies come in site-name order, so this is repeatable).
    """
    if not key_sets:
        return {}
    counts = Counter(frozenset(keys) for keys in key_sets)
    usual = max(counts, key=counts.__getitem__)  # a Counter iterates in first-seen order
    out = {}
    for i, keys in enumerate(key_sets):
        difference = _key_difference(usual, set(keys))
        if difference:
            out[i] = f"metrics differ from the other sites': {difference}"
    return out
