"""The links communicator with shares on another device: the wire carries CPU values, and
what arrives goes back to the device, and into CrypTen's ``CUDALongTensor`` wrapper, of the
tensor it answers. On the CPU with a stand-in for the wrapper; on CUDA (``gpu``) for real."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest
import torch

import mpc.channel.communicator as communicator  # loads CrypTen after its torch patches
from mpc.channel.communicator import LinkCommunicator, arrived, wire_tensor
from mpc.channel.links import Link, Links

# isort: split
from crypten.cuda import CUDALongTensor


class CPUWrapped(CUDALongTensor):
    """CrypTen's CUDA wrapper holding a CPU tensor: the wrapper's handling without a GPU."""

    def __init__(self, data=None, device=None) -> None:
        self._tensor = None if data is None else data.long()


def _pair() -> tuple[Links, Links]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname()[:2])
        b, _ = server.accept()
    return Links({1: Link(a, "data-owner")}, 30), Links({0: Link(b, "model-owner")}, 30)


def _session(make: Callable[[list[int]], object]) -> list[dict]:
    """Both computing parties, in threads, through every collective CrypTen uses."""
    links = _pair()
    out: list[dict] = [{}, {}]

    def party(rank: int) -> None:
        comm = LinkCommunicator(rank, links[rank], init_ttp=False)
        x = make([rank + 1, 10 * (rank + 1)])
        got = out[rank]
        got["all_reduce"] = comm.all_reduce(x)
        got["bxor"] = comm.all_reduce(x, op=torch.distributed.ReduceOp.BXOR)
        got["reduce"] = comm.reduce(x, 0)
        got["gather"] = comm.gather(x, 0)
        got["all_gather"] = comm.all_gather(x)
        b = make([7, 8] if rank == 0 else [0, 0])
        comm.broadcast(b, 0)
        got["broadcast"] = b
        if rank == 0:
            comm.send(x, 1)
        else:
            got["recv"] = comm.recv(make([0, 0]), 0)
        links[rank].close(0.1)

    threads = [threading.Thread(target=party, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(o for o in out), "a party did not finish"
    return out


def _check(out: list[dict], kind: type, device: torch.device) -> None:
    def values(t) -> list[int]:
        assert type(t) is kind or isinstance(t, kind), type(t)
        assert t.device == device
        return t.data.cpu().tolist()

    for rank in (0, 1):
        assert values(out[rank]["all_reduce"]) == [3, 30]
        assert values(out[rank]["bxor"]) == [1 ^ 2, 10 ^ 20]
        assert [values(t) for t in out[rank]["all_gather"]] == [[1, 10], [2, 20]]
        assert values(out[rank]["broadcast"]) == [7, 8]
    assert values(out[0]["reduce"]) == [3, 30] and out[1]["reduce"] is None
    assert [values(t) for t in out[0]["gather"]] == [[1, 10], [2, 20]]
    assert values(out[1]["recv"]) == [1, 10]


def test_the_wire_carries_cpu_values_of_a_wrapped_share() -> None:
    share = torch.tensor([-(2**63), 5, 2**63 - 1])
    wrapped = CUDALongTensor()  # CrypTen's wrapper (empty: no GPU needed) around a share
    wrapped._tensor = share
    for tensor in (share, wrapped):
        on_wire = wire_tensor(tensor)
        assert type(on_wire) is torch.Tensor and on_wire.device.type == "cpu"
        assert torch.equal(on_wire, share)


def test_what_arrives_goes_to_the_device_of_the_tensor_it_answers() -> None:
    received = torch.tensor([1, 2, 3])
    assert arrived(received, torch.empty(3, dtype=torch.long)) is received  # CPU: no copy
    elsewhere = arrived(received, torch.empty(3, dtype=torch.long, device="meta"))
    assert elsewhere.device.type == "meta" and elsewhere.shape == received.shape


def test_cpu_shares_come_back_as_plain_cpu_tensors() -> None:
    _check(_session(torch.tensor), torch.Tensor, torch.device("cpu"))


def test_wrapped_shares_come_back_wrapped(monkeypatch) -> None:
    """Control of the wrapper handling: a wrapped share comes back wrapped from every
    collective (CrypTen's CUDA arithmetic needs the wrapper), with its values."""
    monkeypatch.setattr(communicator, "CUDALongTensor", CPUWrapped)
    _check(_session(lambda v: CPUWrapped(torch.tensor(v))), CUDALongTensor, torch.device("cpu"))


@pytest.mark.gpu
def test_cuda_shares_cross_the_wire_and_come_back_on_cuda() -> None:
    cuda = torch.device("cuda", torch.cuda.current_device())
    _check(_session(lambda v: CUDALongTensor(torch.tensor(v, device=cuda))), CUDALongTensor, cuda)
    _check(_session(lambda v: torch.tensor(v, device=cuda)), torch.Tensor, cuda)
