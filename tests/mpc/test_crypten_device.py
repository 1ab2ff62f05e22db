"""CrypTen's shared randomness is drawn on the CPU whatever device a party asks for
(:mod:`mpc.crypten_device`): the same numbers from the same seed on every device, and no
change at all to a CPU party's draws."""

from __future__ import annotations

import pytest
import torch

import mpc.crypten_compat as compat
from mpc.crypten_device import on_generator_device, share_cpu_generators

# isort: split
import crypten
from crypten.common import rng
from crypten.mpc.primitives import arithmetic, binary
from crypten.mpc.provider import ttp_provider

CPU = torch.device("cpu")
ORIGINAL = rng.generate_random_ring_element.__wrapped_draw__


def _generator(seed: int = 7) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def test_installed_where_crypten_draws() -> None:
    assert "shared-randomness-on-cpu" in compat.check_patches()
    for module in (rng, arithmetic, ttp_provider):
        assert hasattr(module.generate_random_ring_element, "__wrapped_draw__")
    for module in (rng, binary, ttp_provider):
        assert hasattr(module.generate_kbit_random_tensor, "__wrapped_draw__")
    assert hasattr(crypten._setup_prng, "__wrapped_setup__")


def test_cpu_draws_are_unchanged() -> None:
    drawn = rng.generate_random_ring_element((4, 3), generator=_generator(), device=CPU)
    assert torch.equal(drawn, ORIGINAL((4, 3), generator=_generator(), device=CPU))
    bits = rng.generate_kbit_random_tensor((9,), bitlength=1, generator=_generator(), device=CPU)
    original_bits = rng.generate_kbit_random_tensor.__wrapped_draw__
    assert torch.equal(bits, original_bits((9,), bitlength=1, generator=_generator(), device=CPU))


def test_another_device_takes_the_cpu_stream() -> None:
    """A party off the CPU (here the meta device, which holds no values) draws from the CPU
    generator: its stream advances exactly as a CPU party's does."""
    off_cpu, on_cpu = _generator(), _generator()
    wrapped = on_generator_device(ORIGINAL)
    drawn = wrapped((5, 2), generator=off_cpu, device=torch.device("meta"))
    assert drawn.device.type == "meta" and drawn.shape == (5, 2)
    ORIGINAL((5, 2), generator=on_cpu, device=CPU)
    assert torch.equal(
        ORIGINAL((3,), generator=off_cpu, device=CPU), ORIGINAL((3,), generator=on_cpu, device=CPU)
    )


def test_shared_generators_point_at_the_cpu_one() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    table = {key: {cpu: _generator(), cuda: object()} for key in ("prev", "next", "global")}
    own = object()
    table["local"] = {cpu: _generator(), cuda: own}
    share_cpu_generators(table)
    for key in ("prev", "next", "global"):
        assert table[key][cuda] is table[key][cpu]
    assert table["local"][cuda] is own  # a party's own generator stays where it is


@pytest.mark.gpu
def test_a_cuda_draw_is_the_cpu_draw_on_the_gpu() -> None:
    from crypten.cuda import CUDALongTensor

    drawn = rng.generate_random_ring_element((64, 64), generator=_generator(), device="cuda")
    assert isinstance(drawn, CUDALongTensor) and drawn.is_cuda
    expected = ORIGINAL((64, 64), generator=_generator(), device=CPU)
    assert torch.equal(drawn.data.cpu(), expected)
