"""Partitions are disjoint, complete, reproducible, and skewed as configured."""

from __future__ import annotations

import numpy as np
import pytest

from task.data.partition import DirichletPartitioner, IIDPartitioner, QuantityPartitioner

LABELS = np.array([0] * 300 + [1] * 700)


@pytest.mark.parametrize(
    "partitioner", [IIDPartitioner(), DirichletPartitioner(0.5), QuantityPartitioner(1.0)]
)
def test_disjoint_complete_reproducible(partitioner) -> None:
    parts = partitioner(LABELS, 5, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)
    again = partitioner(LABELS, 5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partitioner(LABELS, 5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_is_balanced_in_size_and_class() -> None:
    parts = IIDPartitioner()(LABELS, 3, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 2
    for p in parts:
        assert abs(LABELS[p].mean() - 0.7) < 0.01


def _label_spread(parts) -> float:
    return float(np.std([LABELS[p].mean() for p in parts]))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    spread = {
        a: np.mean([_label_spread(DirichletPartitioner(a)(LABELS, 5, seed=s)) for s in range(5)])
        for a in (0.1, 100.0)
    }
    assert spread[0.1] > 5 * spread[100.0]


def test_quantity_skew_varies_sizes_keeps_labels_mixed() -> None:
    parts = QuantityPartitioner(0.5)(LABELS, 5, seed=1)
    sizes = sorted(len(p) for p in parts)
    assert sizes[-1] > 3 * sizes[0]
    assert _label_spread(parts) < 0.1


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="alpha=0"):
        DirichletPartitioner(0)
    with pytest.raises(ValueError, match="2000 sites"):
        IIDPartitioner()(LABELS, 2000, seed=0)
