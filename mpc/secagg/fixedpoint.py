"""Fixed-point encoding of real vectors into the ring Z_(2^64), and back.

A value ``x`` becomes ``round(x * 2^f)`` in two's complement, held in ``uint64`` so that
numpy's wrap-around addition *is* addition mod 2^64, which is what masking needs.

Precision: each encoded value is off by at most ``2^-(f+1)``, so a sum of ``n`` sites is
off by at most ``n * 2^-(f+1)``; with the default ``f = 32`` and 10 sites that is
``1.2e-9`` before the division by the total example count.

Overflow: the sum of ``n`` values must stay in ``(-2^63, 2^63)`` after scaling, so every
value must satisfy ``|x| < 2^(63-f) / n_max``. :func:`encode` checks this bound for the
configured ``max_parties`` and refuses (naming the largest value) instead of wrapping.
With ``f = 32`` and 100 parties the bound is ``|x| < 2.1e7``: a weight of magnitude 100
times 200 000 examples still fits.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_FRAC_BITS = 32
DEFAULT_MAX_PARTIES = 100
#: float64 holds 52 fractional bits: more cannot be encoded exactly.
MAX_FRAC_BITS = 52


def bound(frac_bits: int, max_parties: int) -> float:
    """The largest magnitude one party may encode so that a sum cannot overflow."""
    return 2.0 ** (63 - frac_bits) / max_parties


def encode(
    x: np.ndarray,
    frac_bits: int = DEFAULT_FRAC_BITS,
    *,
    max_parties: int = DEFAULT_MAX_PARTIES,
    name: str = "value",
) -> np.ndarray:
    """Encode real values as ``uint64`` ring elements with ``frac_bits`` fractional bits."""
    if not 0 <= frac_bits <= MAX_FRAC_BITS:
        raise ValueError(f"frac_bits={frac_bits} must be in [0, {MAX_FRAC_BITS}]")
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or infinite values and cannot be encoded")
    limit = bound(frac_bits, max_parties)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak >= limit:
        raise OverflowError(
            f"{name} has magnitude {peak:.3g}, beyond the fixed-point bound {limit:.3g} "
            f"for {max_parties} parties with {frac_bits} fractional bits"
        )
    return np.rint(x * 2.0**frac_bits).astype(np.int64).view(np.uint64)


def decode(v: np.ndarray, frac_bits: int = DEFAULT_FRAC_BITS) -> np.ndarray:
    """Decode ring elements (for example a revealed sum) to float64."""
    return np.asarray(v, dtype=np.uint64).view(np.int64).astype(np.float64) / 2.0**frac_bits


def pack(
    entries: dict[str, tuple[np.ndarray, int]], *, max_parties: int = DEFAULT_MAX_PARTIES
) -> tuple[np.ndarray, list[list]]:
    """Encode named arrays, each with its own fractional bits, into one ring vector.

    Returns the vector and its layout ``[[name, shape, frac_bits], ...]``, which holds no
    data (every site of a round has the same layout) and lets :func:`unpack` split a sum.
    """
    parts, layout = [], []
    for name, (value, frac_bits) in entries.items():
        value = np.asarray(value, dtype=np.float64)
        parts.append(encode(value.ravel(), frac_bits, max_parties=max_parties, name=name))
        layout.append([name, list(value.shape), frac_bits])
    vector = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    return vector, layout


def check_layout(layout: object, length: int) -> None:
    """Refuse (``ValueError`` naming the entry) a layout that is not a list of distinct
    ``[name, shape, frac_bits]`` covering exactly ``length`` values. A layout travels
    beside a masked vector, so :func:`unpack` checks it before trusting it."""
    if not isinstance(layout, list):
        raise ValueError(f"layout must be a list of [name, shape, frac_bits], not {layout!r:.60}")
    names: set[str] = set()
    total = 0
    for i, entry in enumerate(layout):
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise ValueError(f"layout entry {i} is {entry!r:.60}, not [name, shape, frac_bits]")
        name, shape, frac_bits = entry
        if not isinstance(name, str) or name in names:
            raise ValueError(f"layout entry {i} has a repeated or non-text name {name!r:.60}")
        names.add(name)
        if not isinstance(shape, list | tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"layout entry {name!r:.60} has shape {shape!r:.60}")
        if type(frac_bits) is not int or not 0 <= frac_bits <= MAX_FRAC_BITS:
            raise ValueError(
                f"layout entry {name!r:.60} has frac_bits {frac_bits!r:.20}, "
                f"not an integer in [0, {MAX_FRAC_BITS}]"
            )
        total += math.prod(shape)  # Python integers: no overflow
        if total > length:
            break
    if total != length:
        raise ValueError(f"layout covers {total} values, the vector holds {length}")


def unpack(vector: np.ndarray, layout: list[list]) -> dict[str, np.ndarray]:
    """Split and decode a packed vector (or a sum of packed vectors) by its layout."""
    check_layout(layout, len(vector))
    out, offset = {}, 0
    for name, shape, frac_bits in layout:
        size = math.prod(shape)
        out[name] = decode(vector[offset : offset + size], frac_bits).reshape(shape)
        offset += size
    return out
