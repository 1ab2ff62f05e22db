"""The server's moving average of the global model over rounds (Polyak averaging).

Why: on the few hundred validation images the MCC of single rounds swings from round to
round, so a rule that picks a round by it could pick a mid-run round over converged ones
(docs/results-history.md). An exponential moving average of the aggregated models moves
smoothly from round to round, as the centralised loop's EMA of its weights does; the sites
validate it and the server tests it. Training goes on from the plain aggregate, so the
average adds nothing to the messages and needs nothing from the sites: it is computed from
the aggregate the server already holds, in the clear or under secure aggregation alike.

Measured without Flower (36 rounds, seed 0, test AUC at the best-val-MCC round): IID 0.971
plain -> 0.973 averaged (chosen round 20 -> 36), Dirichlet(0.5) 0.971 -> 0.974 (28 -> 32);
docs/results-history.md.
"""

from __future__ import annotations

import numpy as np

#: Warm-up of the decay, as torch's ``AveragedModel`` examples: ``(1 + r) / (10 + r)``, so
#: that the first rounds' far-from-trained models fade fast.
WARMUP = 10


def check_decay(decay: float | None) -> float | None:
    """``decay`` if it is None (no average) or in (0, 1); a ``ValueError`` naming it."""
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 < decay < 1.0:
        raise ValueError(f"federation.ema_decay={decay!r} must be in (0, 1), or null for none")
    return float(decay)


def decay_at(decay: float, server_round: int) -> float:
    """The decay used after ``server_round``: ``min(decay, (1 + r) / (WARMUP + r))``."""
    return min(decay, (1.0 + server_round) / (WARMUP + server_round))


def update(
    average: dict[str, np.ndarray] | None,
    arrays: dict[str, np.ndarray],
    decay: float,
    server_round: int,
) -> dict[str, np.ndarray]:
    """The average after the aggregate ``arrays`` of ``server_round``.

    Floating-point arrays are averaged in float64 (the state kept across rounds and in the
    checkpoint); integer ones (BatchNorm's batch counters) take the latest value. ``None``
    (the first round, or a run without an average so far) starts at ``arrays``.
    """
    d = decay_at(decay, server_round)
    out = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.floating):
            out[key] = value.copy()
        elif average is None or key not in average:
            out[key] = value.astype(np.float64)
        else:
            # asarray: arithmetic on 0-d arrays gives NumPy scalars, not arrays
            out[key] = np.asarray(d * average[key] + (1.0 - d) * value.astype(np.float64))
    return out


def in_dtypes(average: dict[str, np.ndarray], dtypes: dict[str, np.dtype]) -> dict:
    """The average cast to the model's dtypes, to be sent, evaluated and saved as weights."""
    return {k: v.astype(dtypes.get(k, v.dtype), copy=False) for k, v in average.items()}
