"""Start CrypTen parties as separate processes that talk over real TCP (gloo).

CrypTen's communicator reads its rendezvous from the environment; :func:`party_env` builds
that environment, and :func:`run_local_parties` starts one spawned process per party on this
machine (each a separate interpreter, connected through ``tcp://HOST:PORT``), collects each
party's return value, and fails with the party's own error if one fails or times out.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def party_env(rank: int, world_size: int, host: str, port: int) -> dict[str, str]:
    """Environment variables CrypTen's ``DistributedCommunicator`` reads."""
    return {
        "DISTRIBUTED_BACKEND": "gloo",
        "RENDEZVOUS": f"tcp://{host}:{port}",
        "WORLD_SIZE": str(world_size),
        "RANK": str(rank),
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
    }


def _party_main(fn, rank, env, args, results) -> None:
    os.environ.update(env)
    try:
        # Plain pickle: tensors put on a queue directly travel as shared-memory handles,
        # which die with this process before the parent reads them.
        results.put((rank, "ok", pickle.dumps(fn(rank, *args))))
    except BaseException:  # report any failure of the party to the parent, then exit
        results.put((rank, "error", traceback.format_exc()))


def run_local_parties(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    *,
    host: str = "127.0.0.1",
    timeout: float = 300.0,
) -> list[Any]:
    """Run ``fn(rank, *args)`` in ``world_size`` spawned processes; return their results.

    ``fn`` must be importable (a module-level function) because processes are spawned.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port(host)
    procs = [
        ctx.Process(
            target=_party_main,
            args=(fn, rank, party_env(rank, world_size, host, port), args, results),
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            rank, status, value = results.get(timeout=timeout)
            if status == "error":
                raise RuntimeError(f"CrypTen party {rank} failed:\n{value}")
            out[rank] = pickle.loads(value)
    except queue.Empty as err:
        raise TimeoutError(f"CrypTen parties did not finish within {timeout:.0f} s") from err
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]
