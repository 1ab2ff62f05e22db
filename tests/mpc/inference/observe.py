"""Test-only instruments for a CrypTen party process: what the party could look at.

:func:`observed` wraps a production party function (``run_model_owner``,
``run_data_owner``) without changing what it does: in the party's own process it records
every value the party *opens* (what CrypTen's communicator hands back from a ``reduce``
or ``all_reduce``, the collectives by which CrypTen reveals), what each
``torch.distributed.reduce`` left in the party's buffers beneath CrypTen, and the shares
the party holds of the images, of the outputs and of the first weight tensor, and what it
received point to point. ``reveal`` picks how the outputs are opened: ``"production"``
(:func:`mpc.inference.party.reveal_to_data_owner`), or a negative control: ``"to-all"``
(every party learns them, as a service that forgot ``dst`` would) or ``"crypten-dst"``
(CrypTen's ``get_plain_text(dst=...)``, whose gloo reduce leaves them in the other
party's buffer). :func:`leaked` says whether recorded tensors contain the logits.

Everything here is installed in the spawned party process only, by the test.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

SCALE = 2**16  # CrypTen's fixed-point scale


def observed(run: Callable, reveal: str, width: int, state: dict, session) -> dict[str, Any]:
    """``run(state, session)`` with the party's openings and shares recorded.

    Only opened tensors of ``width`` columns (the number of classes) are kept: the logits
    cannot hide in anything else, and the masked activations opened by every
    multiplication would otherwise fill the memory.
    """
    import crypten
    from crypten.communicator.distributed_communicator import DistributedCommunicator
    from crypten.mpc import MPCTensor

    from mpc.inference import party

    seen: dict[str, Any] = {
        "opened": [],
        "buffers": [],
        "received": [],
        "x_shares": [],
        "y_shares": [],
    }

    def spy(collective: Callable) -> Callable:
        @functools.wraps(collective)
        def wrapper(self, tensor, *args, **kwargs):
            out = collective(self, tensor, *args, **kwargs)
            for t in out if isinstance(out, list) else [out]:
                if torch.is_tensor(t) and t.dim() == 2 and t.shape[1] == width:
                    seen["opened"].append(t.clone())
            return out

        return wrapper

    from mpc.channel.communicator import LinkCommunicator

    communicators = (DistributedCommunicator, LinkCommunicator)  # gloo, or the TLS links
    for cls in communicators:
        cls.reduce = spy(cls.reduce)
        cls.all_reduce = spy(cls.all_reduce)

    # Beneath CrypTen: the buffer each torch.distributed.reduce leaves in this process,
    # whatever CrypTen then returns (None away from dst). Kept by reference and read at the
    # end, as an asynchronous reduce fills it later.
    reduce = torch.distributed.reduce

    def buffer_spy(tensor, *args, **kwargs):
        out = reduce(tensor, *args, **kwargs)
        if tensor.dim() == 2 and tensor.shape[1] == width:
            seen["buffers"].append(tensor)
        return out

    torch.distributed.reduce = buffer_spy

    cryptensor = crypten.cryptensor

    def recording_cryptensor(*args, **kwargs):
        x = cryptensor(*args, **kwargs)
        seen["x_shares"].append(x.share.clone())
        return x

    crypten.cryptensor = recording_cryptensor

    def recv_spy(recv: Callable) -> Callable:
        @functools.wraps(recv)
        def wrapper(self, tensor, *args, **kwargs):
            out = recv(self, tensor, *args, **kwargs)
            if out.dim() == 2 and out.shape[1] == width:
                seen["received"].append(out.clone())
            return out

        return wrapper

    for cls in communicators:
        cls.recv = recv_spy(cls.recv)

    production = party.reveal_to_data_owner

    def recording_reveal(y: MPCTensor, rank: int):
        seen["y_shares"].append(y.share.clone())
        if reveal == "to-all":
            return y.get_plain_text()
        if reveal == "crypten-dst":
            return y.get_plain_text(dst=party.DATA_OWNER)
        return production(y, rank)

    party.reveal_to_data_owner = recording_reveal

    result = run(state, session)
    seen["buffers"] = [t.clone() for t in seen["buffers"]]
    name, weight = next(iter(state["graph"].named_parameters()))
    return {**seen, "result": result, "w_name": name, "w_share": weight.share.clone()}


def observer(run: Callable, width: int, *, reveal: str = "production") -> Callable:
    """A picklable party function for :class:`~mpc.inference.party.PreparedParty`."""
    if reveal not in ("production", "to-all", "crypten-dst"):
        raise ValueError(f"reveal={reveal!r}")
    return functools.partial(observed, run, reveal, width)


def decode(ring: torch.Tensor) -> torch.Tensor:
    """CrypTen's fixed-point decoding of an opened (or summed) ring tensor."""
    return ring.double() / SCALE


def leaked(opened: list[torch.Tensor], logits: np.ndarray, atol: float = 0.05) -> bool:
    """Whether any opened tensor holds any one of ``logits`` in its place. A share or a
    masked value is uniform over the 64-bit ring (or over ±2**47 after truncation), so it
    decodes that close to a given logit with odds below 2**-30."""
    target = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    return any(
        t.shape == target.shape and bool(((decode(t) - target).abs() < atol).any()) for t in opened
    )
