"""CrypTen's correlated randomness drawn on the CPU, whatever device a party computes on.

Why: the two computing parties, and each party and the dealer, draw the same random
numbers from a seed they share: the pairwise seeds of CrypTen's zero sharings
(``generators["prev"]``/``["next"]``), its ``"global"`` seed, and the dealer's seed with
each party, from which the party draws its share of every triple while the dealer draws the
same numbers to compute the rest. CrypTen 0.4.1 keeps one generator per device and draws a
CUDA tensor from a CUDA generator, and a CUDA generator (Philox) gives other numbers than
the CPU's (Mersenne Twister) from the same seed; so does, for large tensors, one GPU model
against another (the numbers follow the kernel's launch grid). A party on CUDA would then
disagree with a party on the CPU, or with a dealer without a GPU, and the outputs would be
garbage. Here every shared stream is drawn on the CPU and the draw is moved to the
party's device, so each party chooses its device alone and the dealer needs no GPU.

On a CPU-only party nothing changes: the draws are the ones CrypTen made before.
Installed by :mod:`mpc.crypten_compat`, on module attributes only.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch

#: The generators two or more parties share (``"local"`` is a party's own: left alone).
SHARED = ("prev", "next", "global")
#: CrypTen's modules that bound the two drawing functions by name at import.
DRAWING_MODULES = (
    "crypten.common.rng",
    "crypten.mpc.primitives.arithmetic",
    "crypten.mpc.primitives.binary",
    "crypten.mpc.provider.ttp_provider",
)
CPU = torch.device("cpu")


def on_generator_device(draw: Callable) -> Callable:
    """``draw`` (CrypTen's ``generate_random_ring_element`` or ``generate_kbit_random_tensor``)
    that, given a CPU generator and another device, draws on the CPU and moves the result,
    wrapped as CrypTen wraps CUDA integers (``CUDALongTensor``); otherwise ``draw`` itself."""

    @functools.wraps(draw)
    def drawn(*args: Any, generator: torch.Generator | None = None, **kwargs: Any):
        device = kwargs.get("device")
        if generator is None or device is None or generator.device.type != "cpu":
            return draw(*args, generator=generator, **kwargs)
        device = torch.device(device)
        if device.type == "cpu":
            return draw(*args, generator=generator, **kwargs)
        values = draw(*args, generator=generator, **{**kwargs, "device": CPU}).to(device)
        if values.is_cuda:
            from crypten.cuda import CUDALongTensor

            return CUDALongTensor(values)
        return values

    drawn.__wrapped_draw__ = draw  # what install() recognises as already wrapped
    return drawn


def share_cpu_generators(generators: dict[str, dict[torch.device, Any]]) -> None:
    """Point every non-CPU entry of the shared generators at the CPU one (the same object,
    so a party draws one stream whichever device it asks for)."""
    for key in SHARED:
        table = generators[key]
        for device in list(table):
            if device.type != "cpu" and CPU in table:
                table[device] = table[CPU]


def _setup_prng_on_cpu(setup: Callable[[], None]) -> Callable[[], None]:
    @functools.wraps(setup)
    def setup_then_share() -> None:
        setup()  # seeds CrypTen's generators with the session's seeds
        import crypten

        share_cpu_generators(crypten.generators)

    setup_then_share.__wrapped_setup__ = setup
    return setup_then_share


def install() -> bool:
    """Wrap the drawing functions where CrypTen's modules use them, and CrypTen's
    ``_setup_prng``; returns False if it was already done."""
    import crypten
    from crypten.common import rng

    if hasattr(rng.generate_random_ring_element, "__wrapped_draw__"):
        return False
    for name in ("generate_random_ring_element", "generate_kbit_random_tensor"):
        original = getattr(rng, name)
        wrapped = on_generator_device(original)
        for module in map(importlib.import_module, DRAWING_MODULES):
            if getattr(module, name, None) is original:
                setattr(module, name, wrapped)
    crypten._setup_prng = _setup_prng_on_cpu(crypten._setup_prng)
    return True


# --- the dealer's seeds (CrypTen's TTP provider sends them with torch.distributed) ------


def ttp_client_seed(self) -> None:
    """``TTPClient._setup_generators`` over the session's communicator: the dealer's seed
    for this party, in one CPU generator that also serves a party on CUDA (see above)."""
    import crypten.communicator as comm

    from mpc.channel.communicator import TTP_RANK

    seed = comm.get().recv(torch.empty(size=(), dtype=torch.long), TTP_RANK)
    self.generator = torch.Generator(device="cpu")
    self.generator.manual_seed(seed.item())
    self.generator_cuda = self.generator


def ttp_server_seeds(self) -> None:
    """``TTPServer._setup_generators`` over the session's communicator: one fresh seed per
    computing party. The dealer draws on the CPU whatever device a party asks for (its
    requests name one): the same streams the parties draw (see above)."""
    import crypten.communicator as comm

    from mpc.channel.communicator import WORLD_SIZE

    seeds = [torch.randint(-(2**63), 2**63 - 1, size=()) for _ in range(WORLD_SIZE)]
    self.generators = [torch.Generator(device="cpu") for _ in range(WORLD_SIZE)]
    self.generators_cuda = self.generators
    for rank, seed in enumerate(seeds):
        comm.get().send(seed, rank)
        self.generators[rank].manual_seed(seed.item())
