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
"""

from __future__ import annotations

import pickle

import torch
from torch.distributed import ReduceOp

import mpc.crypten_compat  # noqa: F401  (CrypTen loads only after its torch patches)

# isort: split
from crypten.common import serial
from crypten.communicator.communicator import Communicator, _logging

from mpc.channel.links import ChannelError, Links

TENSOR, OBJECT, BARRIER = 1, 2, 3
WORLD_SIZE, TTP_RANK = 2, 2


def _bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().contiguous().numpy()).cast("B")


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

    def _recv_tensor(self, like: torch.Tensor, src: int) -> torch.Tensor:
        body = self.links.recv(src, TENSOR)
        expected = like.nelement() * like.element_size()
        if len(body) != expected:
            raise ChannelError(f"rank {src} sent {len(body)} bytes for a {expected}-byte tensor")
        if not body:
            return torch.empty_like(like)
        return torch.frombuffer(body, dtype=like.dtype).reshape(like.shape)

    def _others(self, group: tuple[int, ...] | None) -> list[int]:
        return [r for r in (group or self.main_group) if r != self.rank]

    @staticmethod
    def _combine(a: torch.Tensor, b: torch.Tensor, op) -> torch.Tensor:
        if op == ReduceOp.SUM:
            return a + b  # int64 wraps round the ring, as shares do
        if op == ReduceOp.BXOR:
            return a ^ b
        raise ChannelError(f"reduce operation {op} is not supported")

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
                t.data.copy_(self._recv_tensor(t, src))
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
        like = torch.empty(
            size if size is not None else scatter_list[self.rank].size(), dtype=torch.long
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


# --- the dealer's seeds (CrypTen's TTP provider calls torch.distributed for these) ---------


def ttp_client_seed(self) -> None:
    """``TTPClient._setup_generators`` over the links: the dealer's seed for this party."""
    import crypten.communicator as comm

    seed = comm.get().recv(torch.empty(size=(), dtype=torch.long), TTP_RANK)
    self.generator = torch.Generator(device="cpu")
    self.generator.manual_seed(seed.item())
    self.generator_cuda = None
    if torch.cuda.is_available():
        self.generator_cuda = torch.Generator(device="cuda")
        self.generator_cuda.manual_seed(seed.item())


def ttp_server_seeds(self) -> None:
    """``TTPServer._setup_generators`` over the links: one fresh seed per computing party."""
    import crypten.communicator as comm

    seeds = [torch.randint(-(2**63), 2**63 - 1, size=()) for _ in range(WORLD_SIZE)]
    self.generators = [torch.Generator(device="cpu") for _ in range(WORLD_SIZE)]
    self.generators_cuda = [None] * WORLD_SIZE
    for rank, seed in enumerate(seeds):
        comm.get().send(seed, rank)
        self.generators[rank].manual_seed(seed.item())
        if torch.cuda.is_available():
            self.generators_cuda[rank] = torch.Generator(device="cuda")
            self.generators_cuda[rank].manual_seed(seed.item())
