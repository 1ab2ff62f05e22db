"""The federation without Flower: plain FedAvg over the same site loops.

Used to measure Flower's overhead (``scripts.bench_federated`` (b)) and as a plaintext
reference for the simulation's arithmetic. Same sites, same local loops, same per-round
seeds, training then evaluating every site each round (the moving average of the global
model with ``federation.ema_decay``, as the server's strategy does), and the same
parallelism as the simulation: Flower runs ``cpus // federation.client_cpus`` sites at a
time with ``client_cpus`` threads each, and so does this, in worker processes (one process
with all threads when that is one worker).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism
from omegaconf import DictConfig, OmegaConf

from task.data.sites import Site, partition_site
from task.federation import averaging
from task.federation.local_round import local_evaluate, local_train, weighted_average
from task.federation.pooling import pooled_metrics
from task.models.factory import build_model

State = dict[str, torch.Tensor]


class _SiteWork:
    """What one process does for the sites it is given: their data (loaded on first use,
    as a simulated site loads it on its first message) and one network for all of them."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.sites: dict[int, Site] = {}
        self.model: torch.nn.Module | None = None

    def site(self, index: int) -> Site:
        if index not in self.sites:
            fed = self.cfg.federation
            self.sites[index] = partition_site(self.cfg, index, int(fed.num_sites))
        return self.sites[index]

    def network(self, state: State | None = None) -> torch.nn.Module:
        if self.model is None:
            splits = self.site(0).splits
            self.model = build_model(self.cfg.model, splits.in_shape, len(splits.classes))
        if state is not None:
            self.model.load_state_dict(state)
        return self.model

    def initial_state(self) -> State:
        """The global model of round 0: built after loading a site, seeded from the run's
        seed, as the ServerApp builds it."""
        self.site(0)
        set_determinism(seed=self.cfg.seed)
        self.model = None
        return {k: v.clone() for k, v in self.network().state_dict().items()}

    def train(self, index: int, state: State, server_round: int) -> tuple[State, int]:
        model = self.network(state)
        result = local_train(model, self.site(index), self.cfg, server_round)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, result.num_examples

    def confusion(self, index: int, state: State) -> np.ndarray:
        site = self.site(index)
        metrics = local_evaluate(self.network(state), site.splits.val, site.splits.classes)
        return np.asarray(metrics["confusion"])


_WORKER: _SiteWork | None = None


def _start_worker(cfg_yaml: str, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = _SiteWork(OmegaConf.create(cfg_yaml))


def _call(method: str, *args: Any) -> Any:
    return getattr(_WORKER, method)(*args)


def parallelism(cfg: DictConfig, cpus: int | None = None) -> tuple[int, int]:
    """(sites at a time, threads each) as Flower's simulation runs them here."""
    cpus = cpus or os.cpu_count() or 1
    threads = max(1, min(int(cfg.federation.client_cpus), cpus))
    return max(1, cpus // threads), threads


class _Sites:
    """Calls of a :class:`_SiteWork` method, one per site: in this process when there is
    one worker, else in ``workers`` spawned processes of ``threads`` threads each."""

    def __init__(self, cfg: DictConfig, workers: int, threads: int) -> None:
        self.n_sites = int(cfg.federation.num_sites)
        self.local: _SiteWork | None = None
        self.pool: ProcessPoolExecutor | None = None
        if workers == 1:
            self.local = _SiteWork(cfg)
        else:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=get_context("spawn"),
                initializer=_start_worker,
                initargs=(OmegaConf.to_yaml(cfg, resolve=True), threads),
            )

    def initial_state(self) -> State:
        if self.pool is None:
            return self.local.initial_state()
        return self.pool.submit(_call, "initial_state").result()

    def run(self, method: str, *per_site: list) -> list:
        """``method`` at every site, with the site's arguments from each of ``per_site``."""
        if self.pool is None:
            return [getattr(self.local, method)(*args) for args in zip(*per_site, strict=True)]
        return list(self.pool.map(_call, [method] * self.n_sites, *per_site))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def _rounds(cfg: DictConfig, sites: _Sites, global_state: State) -> tuple[list, State, State]:
    """FedAvg's rounds from ``global_state``, each site's validation pooled after each; the
    history, the last global state and the state validated (its moving average with
    ``federation.ema_decay``)."""
    fed = cfg.federation
    n_sites = int(fed.num_sites)
    dtypes = {k: v.numpy().dtype for k, v in global_state.items()}
    decay = averaging.check_decay(fed.ema_decay)
    average, history = None, []
    indices = list(range(n_sites))
    for server_round in range(1, int(fed.num_rounds) + 1):
        replies = sites.run("train", indices, [global_state] * n_sites, [server_round] * n_sites)
        global_state = weighted_average([s for s, _ in replies], [n for _, n in replies])
        validated = global_state
        if decay is not None:
            numpy_state = {k: v.numpy() for k, v in global_state.items()}
            average = averaging.update(average, numpy_state, decay, server_round)
            cast = averaging.in_dtypes(average, dtypes)
            validated = {k: torch.from_numpy(v) for k, v in cast.items()}
        confusion = sum(sites.run("confusion", indices, [validated] * n_sites))
        k = round(len(confusion) ** 0.5)
        history.append({"round": server_round, **pooled_metrics(confusion.reshape(k, k))})
    return history, global_state, validated


def fedavg_reference(cfg: DictConfig, workers: int | None = None) -> dict:
    """Run the federation without Flower; returns its timing, history and final states.

    ``workers`` sites at a time (default: as the simulation, :func:`parallelism`).
    ``seconds`` runs from the first site's data loading to the end of the last round.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    default_workers, threads = parallelism(cfg)
    workers = min(workers or default_workers, int(cfg.federation.num_sites))
    t0 = time.perf_counter()
    sites = _Sites(cfg, workers, threads)
    try:
        history, global_state, validated = _rounds(cfg, sites, sites.initial_state())
    finally:
        sites.close()
    return {
        "seconds": time.perf_counter() - t0,
        "workers": workers,
        "threads": threads if workers > 1 else torch.get_num_threads(),
        "history": history,
        "state": global_state,
        "validated_state": validated,
    }
