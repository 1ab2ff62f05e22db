"""CrypTen's communicator over the session's authenticated links instead of gloo.

Why: gloo in the torch CPU wheel has no TLS transport, so every share and every seed of
the dealer crossed the network in the clear. CrypTen reaches the network only through
its communicator (``crypten.communicator.get()``) and, for the dealer's seeds, through
three ``torch.distributed`` calls in its TTP provider. :func:`install` swaps both for
this class, through :mod:`mpc.crypten_compat`, never by editing site-packages.

Ranks: 0 model owner and 1 data owner compute; 2 is the dealer (CrypTen's TTP). Groups
are tuples of ranks, as CrypTen passes them back: ``main_group`` (0, 1), ``ttp_group``
(0, 1, 2) and ``ttp_comm_group`` (0, 2), exactly as ``DistributedCommunicator`` makes
them. Every collective of two computing parties is a pair of point-to-point frames.

Devices: a party may compute on CUDA, where CrypTen holds shares as CUDA tensors, most in
its ``CUDALongTensor`` wrapper. The wire always carries CPU bytes (:func:`wire_tensor`),
and what arrives is put on the device, and in the wrapper, of the tensor it answers
(:func:`arrived`), so two parties need not compute on the same device. The dealer's
seeds, which CrypTen's TTP provider sends itself, are in :mod:`mpc.crypten_device`.
"""

from __future__ import annotations

import pickle

import torch
from torch.distributed import ReduceOp

import mpc.crypten_compat  # noqa: F401  (CrypTen loads only after its torch patches)

# isort: split
from crypten.common import serial
from crypten.communicator.communicator import Communicator, _logging
from crypten.cuda import CUDALongTensor

from mpc.channel.links import ChannelError, Links

TENSOR, OBJECT, BARRIER = 1, 2, 3
WORLD_SIZE, TTP_RANK = 2, 2


def wire_tensor(tensor) -> torch.Tensor:
    """What goes on the wire for ``tensor`` (a tensor or a ``CUDALongTensor``): its values
    as a CPU tensor (the same tensor, detached, when it is on the CPU already)."""
    return tensor.data.cpu()


def arrived(values: torch.Tensor, like):
    """``values`` received from the wire (CPU) on ``like``'s device, and wrapped as
    ``like`` is: CrypTen computes on CUDA integers through ``CUDALongTensor`` only."""
    values = values.to(like.device)
    return CUDALongTensor(values) if isinstance(like, CUDALongTensor) else values


def _bytes(tensor) -> memoryview:
    return memoryview(wire_tensor(tensor).contiguous().numpy()).cast("B")


class _Done:
    """A finished request (``isend`` sends at once; the pump never blocks a reader)."""

    def wait(self) -> None:
        return None


class _Pending:
    """``irecv``: the frame is read into the tensor when the caller waits for it."""

    def __init__(self, comm: LinkCommunicator, tensor: torch.Tensor, src: int) -> None:
        self.comm, self.tensor, self.src = comm, tensor, src

    def wait(self) -> None:
        self.tensor.copy_(self.comm._recv_tensor(self.tensor, self.src))


class LinkCommunicator(Communicator):
    """One party's CrypTen communicator over its :class:`Links` to the other parties."""

    BYTES_PER_ELEMENT = 8
    instance: LinkCommunicator | None = None
    _pending: tuple[int, Links] | None = None

    def __init__(self, rank: int, links: Links, init_ttp: bool) -> None:
        self.rank, self.links, self.ttp_initialized = rank, links, init_ttp
        self.world_size = WORLD_SIZE
        self.main_group, self.ttp_group, self.ttp_comm_group = (0, 1), (0, 1, 2), (0, 2)
        self._name = f"rank{rank}"
        self.reset_communication_stats()

    # --- life cycle (what crypten.init and crypten.uninit call) --------------------

    @classmethod
    def prepare(cls, rank: int, links: Links) -> None:
        """The links the next ``crypten.init()`` in this process runs on."""
        cls._pending = (rank, links)

    @classmethod
    def initialize(cls, rank: int = 0, world_size: int = 1, init_ttp: bool = False) -> None:
        if cls._pending is None:
            raise ChannelError("no authenticated links prepared for this CrypTen session")
        (mine, links), cls._pending = cls._pending, None
        cls.instance = cls(mine, links, init_ttp)

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def get(cls) -> LinkCommunicator | None:
        return cls.instance

    @classmethod
    def shutdown(cls) -> None:
        comm, cls.instance = cls.instance, None
        if comm is None:
            return
        try:
            if comm.rank == 0 and comm.ttp_initialized:
                comm.send_obj("terminate", TTP_RANK, comm.ttp_group)
        finally:
            comm.links.close()

    # --- frames ---------------------------------------------------------------------

    def _send_tensor(self, tensor: torch.Tensor, dst: int) -> None:
        self.links.send(dst, TENSOR, _bytes(tensor))

    def _recv_tensor(self, like, src: int):
        """The next tensor frame from ``src``, shaped, typed and placed as ``like``."""
        body = self.links.recv(src, TENSOR)
        data = like.data
        expected = data.nelement() * data.element_size()
        if len(body) != expected:
            raise ChannelError(f"rank {src} sent {len(body)} bytes for a {expected}-byte tensor")
        if not body:
            return arrived(torch.empty(data.shape, dtype=data.dtype), like)
        return arrived(torch.frombuffer(body, dtype=data.dtype).reshape(data.shape), like)

    def _others(self, group: tuple[int, ...] | None) -> list[int]:
        return [r for r in (group or self.main_group) if r != self.rank]

    @staticmethod
    def _combine(a, b, op):
        if op == ReduceOp.SUM:
            values = a.data + b.data  # int64 wraps round the ring, as shares do
        elif op == ReduceOp.BXOR:
            values = a.data ^ b.data
        else:
            raise ChannelError(f"reduce operation {op} is not supported")
        return CUDALongTensor(values) if isinstance(a, CUDALongTensor) else values

    # --- point to point -------------------------------------------------------------

    @_logging
    def send(self, tensor, dst):
        self._send_tensor(tensor, dst)

    @_logging
    def recv(self, tensor, src=None):
        return self._recv_tensor(tensor, src).clone()

    @_logging
    def isend(self, tensor, dst):
        self._send_tensor(tensor, dst)
        return _Done()

    @_logging
    def irecv(self, tensor, src=None):
        return _Pending(self, tensor, src)

    # --- collectives of the computing parties ---------------------------------------

    def _exchange(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        (peer,) = self._others(None)
        for t in tensors:
            self._send_tensor(t, peer)
        return [self._recv_tensor(t, peer) for t in tensors]

    @_logging
    def all_reduce(self, input, op=ReduceOp.SUM, batched=False):
        tensors = list(input) if batched else [input]
        theirs = self._exchange(tensors)
        result = [self._combine(a, b, op) for a, b in zip(tensors, theirs, strict=True)]
        return result if batched else result[0]

    @_logging
    def reduce(self, input, dst, op=ReduceOp.SUM, batched=False):
        tensors = list(input) if batched else [input]
        if self.rank != dst:
            for t in tensors:
                self._send_tensor(t, dst)
            return None
        (peer,) = self._others(None)
        result = [self._combine(t, self._recv_tensor(t, peer), op) for t in tensors]
        return result if batched else result[0]

    @_logging
    def broadcast(self, input, src, group=None, batched=False):
        tensors = list(input) if batched else [input]
        for t in tensors:
            if self.rank == src:
                for dst in self._others(group):
                    self._send_tensor(t, dst)
            else:
                t.data.copy_(self._recv_tensor(t, src).data)
        return input

    @_logging
    def gather(self, tensor, dst):
        if self.rank != dst:
            self._send_tensor(tensor, dst)
            return [None]
        return [tensor if r == dst else self._recv_tensor(tensor, r) for r in self.main_group]

    @_logging
    def all_gather(self, tensor):
        (theirs,) = self._exchange([tensor])
        return [tensor if r == self.rank else theirs for r in self.main_group]

    @_logging
    def scatter(self, scatter_list, src, size=None, device=None):
        if self.rank == src:
            for dst in self._others(None):
                self._send_tensor(scatter_list[dst], dst)
            return scatter_list[self.rank]
        mine = scatter_list[self.rank] if scatter_list else None
        like = torch.empty(
            size if size is not None else mine.size(),
            dtype=torch.long,
            device=device or (mine.device if mine is not None else None),
        )
        return self._recv_tensor(like, src).clone()

    @_logging
    def barrier(self):
        for peer in self._others(None):
            self.links.send(peer, BARRIER, b"")
        for peer in self._others(None):
            self.links.recv(peer, BARRIER)

    # --- objects (CrypTen's restricted unpickler, as DistributedCommunicator) --------

    @_logging
    def send_obj(self, obj, dst, group=None):
        self.links.send(dst, OBJECT, pickle.dumps(obj))

    @_logging
    def recv_obj(self, src, group=None):
        return serial.restricted_loads(bytes(self.links.recv(src, OBJECT)))

    @_logging
    def broadcast_obj(self, obj, src, group=None):
        if self.rank == src:
            for dst in self._others(group):
                self.links.send(dst, OBJECT, pickle.dumps(obj))
            return obj
        return serial.restricted_loads(bytes(self.links.recv(src, OBJECT)))

    # --- facts ----------------------------------------------------------------------

    def get_world_size(self):
        return self.world_size

    def get_rank(self):
        return self.rank

    def get_ttp_rank(self):
        return TTP_RANK

    def set_name(self, name):
        self._name = name

    def get_name(self):
        return self._name

    def get_distributed_backend(self):
        return "tls"
