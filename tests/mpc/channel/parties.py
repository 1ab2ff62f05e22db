"""Party functions the channel tests run in spawned processes (importable by name)."""

from __future__ import annotations

from pathlib import Path

import torch

from mpc.channel.certs import DATA_OWNER, DEALER, MODEL_OWNER, PartyCredentials
from mpc.channel.session import Endpoints, listen, open_links
from mpc.inference.party import deal, join_links

ROLE_OF_RANK = (MODEL_OWNER, DATA_OWNER, DEALER)


def credentials(folders: dict[str, Path] | None, role: str) -> PartyCredentials | None:
    return None if folders is None else PartyCredentials.from_folder(folders[role], role)


def _seed_bytes(seed: int) -> bytes:
    """A seed as CrypTen sends it: one int64 tensor element (two's complement)."""
    return torch.tensor(seed - 2**64 if seed >= 2**63 else seed).numpy().tobytes()


def product_and_relu(
    rank: int,
    folders: dict[str, Path] | None,
    endpoints: Endpoints,
    listen_at: dict[str, str],
    session: str,
    x: torch.Tensor,
    w: torch.Tensor,
    timeout: float = 60,
) -> dict:
    """One small CrypTen computation that needs the dealer (a product and a ReLU): the
    data owner shares ``x``, the model owner ``w``; only the data owner learns the result.

    Returns what the tapping test searches the wire for (a test-only hook): the party's
    pairwise seeds and the dealer's seeds, this party's shares, and the opened result.
    """
    role = ROLE_OF_RANK[rank]
    listener = listen(listen_at[role]) if role in listen_at else None
    links = open_links(role, session, endpoints, credentials(folders, role), listener, timeout)
    crypten = join_links(rank, links)
    if role == DEALER:
        server = deal(crypten)  # deals until the model owner ends the session
        return {"seeds": [_seed_bytes(g.initial_seed()) for g in server.generators]}
    crypten.init()
    try:
        xs = crypten.cryptensor(x if role == DATA_OWNER else torch.zeros_like(x), src=1)
        ws = crypten.cryptensor(w if role == MODEL_OWNER else torch.zeros_like(w), src=0)
        y = (xs * ws).relu()
        cpu = torch.device("cpu")
        seeds = [crypten.generators[k][cpu].initial_seed() for k in ("prev", "next", "global")]
        out = {
            "seeds": [_seed_bytes(s) for s in seeds],
            "shares": [t.share.numpy().tobytes() for t in (xs, ws, y)],
            "stats": links.stats(),
        }
        out["result"] = y.get_plain_text(dst=1)
        return out
    finally:
        crypten.uninit()
