"""The three parties of one encrypted-diagnosis session, and what each computes.

Ranks: 0 is the model owner (shares the weights), 1 the data owner (shares the images,
alone learns the logits), 2 the dealer: CrypTen's trusted third party (TTP), which hands
out the multiplication triples and comparison randomness. CrypTen's default provider
instead lets party 0 generate all of that randomness (trusted *first* party), which would
let the model owner unmask the image; the TTP keeps it with a party that holds no input.
Threat model: semi-honest parties and a dealer that colludes with neither
(docs/encrypted-diagnosis.md).

How the parties talk is the session's ``transport``: ``tls``, mutually authenticated TLS
1.3 between every pair (:mod:`mpc.channel`), with the dealer a service of its own
(:mod:`server.dealer`); ``plain``, the same links without TLS, for local experiments
only; or ``gloo``, CrypTen's own plaintext transport, kept as the benchmarks' baseline.
Each party runs in a process of its own (:mod:`mpc.inference.process`). The two computing
parties each compute on a device of their own choice (:mod:`mpc.inference.device`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mpc.channel.certs import PartyCredentials
from mpc.channel.links import Links
from mpc.channel.session import Endpoints, listen, open_links
from mpc.inference.device import CPU, check_transport, to_party_device
from mpc.inference.wire import parse_address

MODEL_OWNER, DATA_OWNER, DEALER = 0, 1, 2
ROLES = ("model-owner", "data-owner", "dealer")
#: Computing parties; the dealer joins as one extra rank.
WORLD_SIZE = 2
TRANSPORTS = ("tls", "plain", "gloo")


@dataclass(frozen=True)
class Session:
    """What all parties of one session must agree on (public)."""

    n_images: int
    batch: int
    transport: str = "tls"
    session_id: str = ""  # names the session to the dealer and the model owner's port
    endpoints: Endpoints | None = None  # tls, plain: where the model owner and dealer listen
    rendezvous: str = ""  # gloo: tcp://HOST:PORT, hosted by the model owner

    def chunks(self) -> list[int]:
        """Sizes of the encrypted batches, the same at every party."""
        full, rest = divmod(self.n_images, self.batch)
        return [self.batch] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Channel:
    """One party's own side of the transport: its credentials (None: not TLS) and, for
    the model owner, the host it listens on (the advertised address may differ)."""

    creds: PartyCredentials | None = None
    listen_host: str | None = None
    timeout: float = 120.0


def join_session(rank: int, session: Session, channel: Channel = Channel()):
    """Join the session as ``rank`` with the TTP provider; returns CrypTen (not yet
    initialised: ``crypten.init()`` connects, or the dealer's ``TTPServer`` does)."""
    if session.transport not in TRANSPORTS:
        raise ValueError(f"transport {session.transport!r} is not one of {TRANSPORTS}")
    if session.transport == "gloo":
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

        return _with_ttp(crypten)
    creds = channel.creds if session.transport == "tls" else None
    if session.transport == "tls" and creds is None:
        raise ValueError(f"the {ROLES[rank]} has no credentials for a TLS session")
    return join_links(rank, _links(rank, session, channel, creds))


def join_links(rank: int, links: Links):
    """Join as ``rank`` over links already open (the dealer service accepts its own);
    returns CrypTen with the TTP provider, not yet initialised."""
    from mpc.crypten_compat import crypten, use_links

    use_links(rank, links)
    return _with_ttp(crypten)


def _with_ttp(crypten):
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True  # count rounds and bytes
    return crypten


def _links(rank: int, session: Session, channel: Channel, creds: PartyCredentials | None):
    listener = None
    if rank in (MODEL_OWNER, DEALER):  # they listen; the data owner only dials out
        ends = session.endpoints
        _, port = parse_address(ends.model_owner if rank == MODEL_OWNER else ends.dealer)
        listener = listen(f"{channel.listen_host or '127.0.0.1'}:{port}")
    with listener or contextlib.nullcontext():
        return open_links(
            ROLES[rank], session.session_id, session.endpoints, creds, listener, channel.timeout
        )


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
    out = {"rounds": int(s["rounds"]), "bytes": int(s["bytes"])}
    links = getattr(comm.get(), "links", None)  # the TLS or plain links: bytes on the wire
    if links is not None:
        out["wire_bytes"] = sum(links.stats().values())
    return out


# --- model owner ---------------------------------------------------------------------


def prepare_model_owner(
    checkpoint: str, channel: Channel = Channel(), device: torch.device = CPU
) -> dict[str, Any]:
    from mpc.inference.model import load_served

    served = load_served(checkpoint)
    graph = convert(served.model, served.input_shape)
    return {"graph": graph, "shape": served.input_shape, "channel": channel, "device": device}


@contextlib.contextmanager
def encrypted_session(rank: int, session: Session, state: dict[str, Any]):
    """Join ``session`` as ``rank`` with ``state``'s graph encrypted from the model owner's
    weights (the other party contributes only placeholders) and moved to its device; yields
    CrypTen and the model-sharing traffic, with the counters reset for the inference;
    leaves the session on exit."""
    graph, device = state["graph"], state.get("device", CPU)
    check_transport(session.transport, device)
    crypten = join_session(rank, session, state["channel"])
    crypten.init()
    try:
        graph.encrypt(src=MODEL_OWNER)
        to_party_device(graph, device)
        graph.eval()
        model_stats = _stats()
        crypten.reset_communication_stats()
        yield crypten, model_stats
    finally:
        crypten.uninit()


def reveal_to_data_owner(y: Any, rank: int) -> torch.Tensor | None:
    """Open the encrypted output ``y`` to the data owner only: the model owner sends its
    share point to point and the data owner adds the two (``None`` at the model owner).

    Why not CrypTen's ``get_plain_text(dst=DATA_OWNER)``: it reveals by gloo's ``reduce``,
    which leaves reduced chunks, the sum of both shares, in the other rank's buffer too, so
    the model owner's memory held part of each batch's logits (tests/mpc/inference).
    The result is on the CPU, whatever device the party computes on.
    """
    import crypten.communicator as comm

    share = y.share.data.cpu()  # a CUDA share, in CrypTen's wrapper or not, comes home
    if rank == MODEL_OWNER:
        comm.get().send(share, dst=DATA_OWNER)
        return None
    other = comm.get().recv(torch.empty_like(share), src=MODEL_OWNER)
    return y.encoder.decode(share + other)  # int64 adds wrap round the ring, as shares do


def run_model_owner(state: dict[str, Any], session: Session) -> dict[str, Any]:
    """Share the weights, take part in the forward passes, learn nothing of the output."""
    graph, device = state["graph"], state.get("device", CPU)
    with encrypted_session(MODEL_OWNER, session, state) as (crypten, model_stats):
        t0 = time.perf_counter()
        with torch.no_grad():
            for size in session.chunks():
                placeholder = torch.zeros(size, *state["shape"])
                x = crypten.cryptensor(placeholder, src=DATA_OWNER, device=device)
                reveal_to_data_owner(graph(x), MODEL_OWNER)  # sends its share only
        return {
            "model_sharing": model_stats,
            "inference": _stats(),
            "seconds": time.perf_counter() - t0,
        }


# --- data owner ----------------------------------------------------------------------


def prepare_data_owner(
    config: dict[str, Any],
    images: np.ndarray,
    signature: str | None = None,
    channel: Channel = Channel(),
    device: torch.device = CPU,
) -> dict[str, Any]:
    """Build the public architecture; with ``signature`` (announced by the model owner)
    refuse a graph whose layout differs. The images stay on the CPU until shared."""
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
    images = torch.from_numpy(images)
    return {"graph": graph, "images": images, "channel": channel, "device": device}


def run_data_owner(state: dict[str, Any], session: Session) -> dict[str, Any]:
    """Share the images, take part in the forward passes, learn the logits."""
    # The graph receives shares of weights it cannot read.
    graph, device = state["graph"], state.get("device", CPU)
    with encrypted_session(DATA_OWNER, session, state) as (crypten, model_stats):
        logits, seconds, start = [], [], 0
        with torch.no_grad():
            for size in session.chunks():
                t0 = time.perf_counter()
                chunk = state["images"][start : start + size]
                x = crypten.cryptensor(chunk, src=DATA_OWNER, device=device)
                logits.append(reveal_to_data_owner(graph(x), DATA_OWNER))
                seconds.append(time.perf_counter() - t0)
                start += size
        return {
            "logits": torch.cat(logits).numpy(),
            "batch_seconds": seconds,
            "model_sharing": model_stats,
            "inference": _stats(),
            "device": str(device),
        }


# --- dealer --------------------------------------------------------------------------


def prepare_dealer(channel: Channel = Channel()) -> dict[str, Any]:
    from mpc.crypten_compat import crypten  # noqa: F401  (import ahead of the session)

    return {"channel": channel}


def run_dealer(state: dict[str, Any], session: Session) -> dict[str, Any]:
    """Serve triples and comparison randomness until the model owner ends the session."""
    deal(join_session(DEALER, session, state["channel"]))
    return {}


def deal(crypten):
    """Deal until the model owner ends the session (CrypTen's ``TTPServer`` joins the
    session itself); returns the server, whose generators hold the dealer's seeds."""
    from crypten.mpc.provider.ttp_provider import TTPServer

    try:
        return TTPServer()
    finally:
        crypten.uninit()
