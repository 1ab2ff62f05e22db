"""The three processes of one encrypted-diagnosis session, and how each is started.

Ranks: 0 is the model owner (hosts the rendezvous, shares the weights), 1 the data owner
(shares the images, alone learns the logits), 2 the dealer: CrypTen's trusted third party
(TTP), which hands out the multiplication triples and comparison randomness. CrypTen's
default provider instead lets party 0 generate all of that randomness (trusted *first*
party), which would let the model owner unmask the image; the TTP keeps it with a process
that holds no input. Threat model: semi-honest parties and a dealer that colludes with
neither (docs/encrypted-diagnosis.md).

Every role runs in a spawned process of its own, in two steps: *prepare* (import CrypTen,
load and convert the model; no network) as soon as the process starts, then *run* when the
session's rendezvous is known. A service thus keeps a prepared model owner and dealer
waiting, so a request does not pay for interpreter start-up and model conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import pickle
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

MODEL_OWNER, DATA_OWNER, DEALER = 0, 1, 2
#: Computing parties; the dealer joins as one extra rank.
WORLD_SIZE = 2


class PartyError(RuntimeError):
    """A party process failed, died or ran past its session timeout."""


@dataclass(frozen=True)
class Session:
    """What all parties of one session must agree on (public)."""

    rendezvous: str  # tcp://HOST:PORT, hosted by the model owner
    n_images: int
    batch: int

    def chunks(self) -> list[int]:
        """Sizes of the encrypted batches, the same at every party."""
        full, rest = divmod(self.n_images, self.batch)
        return [self.batch] * full + ([rest] if rest else [])


def join_session(rank: int, session: Session):
    """Join the session's process group as ``rank`` with the TTP provider."""
    os.environ.update(
        {
            "DISTRIBUTED_BACKEND": "gloo",
            "RENDEZVOUS": session.rendezvous,
            "WORLD_SIZE": str(WORLD_SIZE),
            "RANK": str(rank),
            "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
        }
    )
    from mpc.crypten_compat import crypten

    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    return crypten


def convert(model: torch.nn.Module, shape: tuple[int, ...]):
    """The CrypTen graph of ``model`` for inputs ``(batch, *shape)`` (not yet encrypted)."""
    from mpc.crypten_compat import crypten

    return crypten.nn.from_pytorch(model, torch.zeros(1, *shape))


def graph_signature(graph) -> str:
    """SHA-256 of the graph's parameter and buffer names and shapes (not values): both
    parties' graphs must have the same, or the weight shares would land in wrong places."""
    layout = [(name, tuple(t.shape)) for name, t in graph.named_parameters()]
    layout += [(name, tuple(t.shape)) for name, t in graph.named_buffers()]
    return hashlib.sha256(repr(layout).encode()).hexdigest()


class GraphMismatch(ValueError):
    """The data owner's graph differs from the one the model owner announced."""


def _stats() -> dict[str, int]:
    import crypten.communicator as comm

    s = comm.get().get_communication_stats()
    return {"rounds": int(s["rounds"]), "bytes": int(s["bytes"])}


def _reset_stats() -> None:
    import crypten.communicator as comm

    comm.get().reset_communication_stats()


# --- model owner ---------------------------------------------------------------------


def prepare_model_owner(checkpoint: str) -> dict[str, Any]:
    from mpc.inference.model import load_served

    served = load_served(checkpoint)
    return {"graph": convert(served.model, served.input_shape), "shape": served.input_shape}


@contextlib.contextmanager
def encrypted_session(rank: int, session: Session, graph):
    """Join ``session`` as ``rank`` with ``graph`` encrypted from the model owner's weights
    (the other party contributes only placeholders); yields CrypTen and the model-sharing
    traffic, with the counters reset for the inference; leaves the session on exit."""
    crypten = join_session(rank, session)
    crypten.init()
    try:
        graph.encrypt(src=MODEL_OWNER)
        graph.eval()
        model_stats = _stats()
        _reset_stats()
        yield crypten, model_stats
    finally:
        crypten.uninit()


def reveal_to_data_owner(y: Any, rank: int) -> torch.Tensor | None:
    """Open the encrypted output ``y`` to the data owner only: the model owner sends its
    share point to point and the data owner adds the two (``None`` at the model owner).

    Why not CrypTen's ``get_plain_text(dst=DATA_OWNER)``: it reveals by gloo's ``reduce``,
    which leaves reduced chunks, the sum of both shares, in the other rank's buffer too, so
    the model owner's memory held part of each batch's logits (tests/mpc/inference).
    """
    import crypten.communicator as comm

    share = y.share
    if rank == MODEL_OWNER:
        comm.get().send(share, dst=DATA_OWNER)
        return None
    other = comm.get().recv(torch.empty_like(share), src=MODEL_OWNER)
    return y.encoder.decode(share + other)  # int64 adds wrap round the ring, as shares do


def run_model_owner(state: dict[str, Any], session: Session) -> dict[str, Any]:
    """Share the weights, take part in the forward passes, learn nothing of the output."""
    with encrypted_session(MODEL_OWNER, session, state["graph"]) as (crypten, model_stats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for size in session.chunks():
                x = crypten.cryptensor(torch.zeros(size, *state["shape"]), src=DATA_OWNER)
                reveal_to_data_owner(state["graph"](x), MODEL_OWNER)  # sends its share only
        return {
            "model_sharing": model_stats,
            "inference": _stats(),
            "seconds": time.perf_counter() - t0,
        }


# --- data owner ----------------------------------------------------------------------


def prepare_data_owner(
    config: dict[str, Any], images: np.ndarray, signature: str | None = None
) -> dict[str, Any]:
    """Build the public architecture; with ``signature`` (announced by the model owner)
    refuse a graph whose layout differs."""
    from mpc.inference.model import build_architecture, input_shape

    shape = input_shape(config)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images of shape {images.shape[1:]} do not match the model's {shape}")
    # The architecture only: its weights are placeholders, replaced by the owner's shares.
    graph = convert(build_architecture(config), shape)
    if signature is not None and graph_signature(graph) != signature:
        raise GraphMismatch(
            "the model graph built here differs from the service's (different torch, CrypTen "
            "or MONAI versions on the two sides?)"
        )
    return {"graph": graph, "images": torch.from_numpy(images)}


def run_data_owner(state: dict[str, Any], session: Session) -> dict[str, Any]:
    """Share the images, take part in the forward passes, learn the logits."""
    # The graph receives shares of weights it cannot read.
    with encrypted_session(DATA_OWNER, session, state["graph"]) as (crypten, model_stats):
        logits, seconds, start = [], [], 0
        with torch.no_grad():
            for size in session.chunks():
                t0 = time.perf_counter()
                x = crypten.cryptensor(state["images"][start : start + size], src=DATA_OWNER)
                logits.append(reveal_to_data_owner(state["graph"](x), DATA_OWNER))
                seconds.append(time.perf_counter() - t0)
                start += size
        return {
            "logits": torch.cat(logits).numpy(),
            "batch_seconds": seconds,
            "model_sharing": model_stats,
            "inference": _stats(),
        }


# --- dealer --------------------------------------------------------------------------


def prepare_dealer() -> dict[str, Any]:
    from mpc.crypten_compat import crypten  # noqa: F401  (import ahead of the session)

    return {}


def run_dealer(state: dict[str, Any], session: Session) -> dict[str, Any]:
    """Serve triples and comparison randomness until the model owner ends the session."""
    crypten = join_session(DEALER, session)
    from crypten.mpc.provider.ttp_provider import TTPServer

    try:
        TTPServer()  # joins the group and serves until it receives "terminate"
    finally:
        crypten.uninit()
    return {}


# --- processes -----------------------------------------------------------------------


def _prepared_main(prepare: Callable, run: Callable, args: tuple, conn: Connection) -> None:
    # Plain pickle, not the Pipe's: torch would send tensors as shared-memory handles,
    # which die with this process before the parent reads them.
    try:
        state = prepare(*args)
        conn.send_bytes(pickle.dumps(("ready", None)))
        session = conn.recv()
        conn.send_bytes(pickle.dumps(("ok", run(state, session))))
    except BaseException:  # report any failure to the parent, which decides what to do
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    finally:
        conn.close()


class PreparedParty:
    """A party in its own spawned process: prepared at once, run on :meth:`start`."""

    def __init__(self, name: str, prepare: Callable, run: Callable, args: tuple = ()) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_prepared_main, args=(prepare, run, args, child), name=name, daemon=True
        )
        self.process.start()
        child.close()
        self._ready = False

    def wait_ready(self, timeout: float) -> None:
        """Block until preparation is done; raise :class:`PartyError` if it failed."""
        if self._ready:
            return
        status, value = self._receive(timeout, "prepare")
        if status != "ready":
            raise PartyError(f"{self.name} failed to prepare:\n{value}")
        self._ready = True

    def start(self, session: Session, timeout: float = 120.0) -> None:
        self.wait_ready(timeout)
        self._conn.send(session)

    def result(self, timeout: float) -> Any:
        """The party's return value; :class:`PartyError` on failure, death or timeout."""
        status, value = self._receive(timeout, "session")
        if status != "ok":
            raise PartyError(f"{self.name} failed:\n{value}")
        self.process.join(timeout=10)
        return value

    def _receive(self, timeout: float, stage: str) -> tuple[str, Any]:
        try:
            if not self._conn.poll(timeout):
                self.kill()
                raise PartyError(f"{self.name} did not finish its {stage} within {timeout:.0f} s")
            return pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as err:
            self.kill()
            raise PartyError(
                f"{self.name} died during its {stage} (exit code {self.process.exitcode})"
            ) from err

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self._conn.close()
