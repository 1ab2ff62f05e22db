"""Split a data set across simulated hospitals: IID, label skew, quantity skew.

Every partitioner is a pure function of the labels and a seed, so each simulated site
(in its own process) computes the same assignment and takes only its own part.
"""

from __future__ import annotations

import numpy as np


def _check(n_sites: int, labels: np.ndarray) -> None:
    if n_sites < 1:
        raise ValueError(f"number of sites {n_sites} must be at least 1")
    if len(labels) < n_sites:
        raise ValueError(f"{len(labels)} examples cannot be split across {n_sites} sites")


def _dirichlet_split(
    idx: np.ndarray, n_sites: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Cut ``idx`` into ``n_sites`` consecutive pieces with Dirichlet(alpha) shares."""
    shares = rng.dirichlet(np.full(n_sites, alpha))
    cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
    return np.split(idx, cuts)


class IIDPartitioner:
    """Shuffle, then deal equal shares (stratified by class, so every site sees each)."""

    def __call__(self, labels: np.ndarray, n_sites: int, seed: int) -> list[np.ndarray]:
        _check(n_sites, labels)
        rng = np.random.default_rng(seed)
        parts: list[list[int]] = [[] for _ in range(n_sites)]
        offset = 0
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            for j, chunk in enumerate(np.array_split(idx, n_sites)):
                parts[(j + offset) % n_sites].extend(chunk.tolist())
            offset += len(idx) % n_sites
        return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


class DirichletPartitioner:
    """Label skew: each class is split across sites by proportions ~ Dirichlet(alpha).

    Small ``alpha`` (0.1) gives sites dominated by one class; large (100) is close to IID.
    ``min_size`` re-draws until every site has at least that many examples.
    """

    def __init__(self, alpha: float = 0.5, min_size: int = 10, max_tries: int = 1000) -> None:
        if alpha <= 0:
            raise ValueError(f"Dirichlet alpha={alpha} must be positive")
        self.alpha, self.min_size, self.max_tries = alpha, min_size, max_tries

    def __call__(self, labels: np.ndarray, n_sites: int, seed: int) -> list[np.ndarray]:
        _check(n_sites, labels)
        rng = np.random.default_rng(seed)
        for _ in range(self.max_tries):
            parts: list[list[int]] = [[] for _ in range(n_sites)]
            for cls in np.unique(labels):
                idx = rng.permutation(np.flatnonzero(labels == cls))
                for site, chunk in enumerate(_dirichlet_split(idx, n_sites, self.alpha, rng)):
                    parts[site].extend(chunk.tolist())
            if min(len(p) for p in parts) >= self.min_size:
                return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
        raise ValueError(
            f"no Dirichlet(alpha={self.alpha}) split gave every one of {n_sites} sites "
            f"{self.min_size} examples in {self.max_tries} tries; raise alpha or lower min_size"
        )


class QuantityPartitioner:
    """Quantity skew: site sizes ~ Dirichlet(alpha) shares of a shuffled data set."""

    def __init__(self, alpha: float = 1.0, min_size: int = 10, max_tries: int = 1000) -> None:
        if alpha <= 0:
            raise ValueError(f"quantity-skew alpha={alpha} must be positive")
        self.alpha, self.min_size, self.max_tries = alpha, min_size, max_tries

    def __call__(self, labels: np.ndarray, n_sites: int, seed: int) -> list[np.ndarray]:
        _check(n_sites, labels)
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(labels))
        for _ in range(self.max_tries):
            parts = _dirichlet_split(idx, n_sites, self.alpha, rng)
            if min(len(p) for p in parts) >= self.min_size:
                return [np.sort(p.astype(np.int64)) for p in parts]
        raise ValueError(
            f"no quantity split (alpha={self.alpha}) gave every one of {n_sites} sites "
            f"{self.min_size} examples in {self.max_tries} tries"
        )
