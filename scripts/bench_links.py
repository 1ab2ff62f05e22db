"""What TLS costs per byte on the parties' links, apart from any MPC protocol.

Two processes on 127.0.0.1 exchange large frames both ways at once, as two computing
parties do in every ``all_reduce``, over :class:`mpc.channel.links.Links`: once on plain
TCP and once inside TLS 1.3 with the consortium's certificates (the production contexts of
:mod:`mpc.channel.tls`). Runs alternate (plain, TLS, plain, TLS) and each figure is the
better of its runs. The cipher alone (AES-256-GCM through ``cryptography``, the suite
TLS 1.3 negotiates here) is timed in this process as the floor of what encryption costs.

Why: the encrypted-inference benchmark shows TLS's overhead over gloo growing with the
bytes a model moves per image; this isolates that cost per gigabyte, so the overhead a
model will see is its bytes per image times the difference.

    python -m scripts.bench_links [--mb 64] [--reps 5] [--out outputs/bench_links]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mpc.channel import tls
from mpc.channel.certs import DATA_OWNER, MODEL_OWNER, issue_party, make_consortium_ca
from mpc.channel.links import Link, Links
from task.evaluation.report import write_benchmark
from task.runtime.machine import machine_facts

GIB = 1 << 30


def _party(sock: socket.socket, creds, server: bool, mb: int, reps: int, q) -> None:
    """One end: exchange ``reps`` frames of ``mb`` MiB each way; report wall and CPU time."""
    sock.setblocking(True)
    if creds is not None and server:
        _, sock = tls.secure_server(sock, creds, [DATA_OWNER])
    elif creds is not None:
        sock = tls.secure_client(sock, creds, "127.0.0.1", MODEL_OWNER)
    links = Links({0: Link(sock, "peer")}, timeout=120)
    payload = memoryview(np.random.default_rng(0).bytes(mb << 20))
    links.send(0, 1, payload), links.recv(0, 1)  # warm: buffers and TCP windows
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        links.send(0, 1, payload)
        links.recv(0, 1)
    q.put((time.perf_counter() - t0, time.process_time() - c0))
    links.close()


def exchange(folder: Path | None, mb: int, reps: int) -> dict[str, float]:
    """Seconds (wall, and CPU of the busier end) per GiB sent each way."""
    server = socket.create_server(("127.0.0.1", 0))
    dialled = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    creds = {MODEL_OWNER: None, DATA_OWNER: None}
    if folder is not None:
        creds = {r: issue_party(folder, folder / r, r) for r in (MODEL_OWNER, DATA_OWNER)}
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ends = [
        ctx.Process(target=_party, args=(accepted, creds[MODEL_OWNER], True, mb, reps, q)),
        ctx.Process(target=_party, args=(dialled, creds[DATA_OWNER], False, mb, reps, q)),
    ]
    for p in ends:
        p.start()
    results = [q.get(timeout=600) for _ in ends]
    for p in ends:
        p.join()
    accepted.close(), dialled.close()
    gib = mb * reps / 1024
    return {
        "wall_s_per_gib": max(w for w, _ in results) / gib,
        "cpu_s_per_gib": max(c for _, c in results) / gib,
    }


def cipher_floor(mb: int) -> float:
    """Seconds to encrypt and decrypt one GiB with AES-256-GCM in one thread."""
    aes, nonce = AESGCM(AESGCM.generate_key(bit_length=256)), os.urandom(12)
    data = os.urandom(mb << 20)
    t0 = time.perf_counter()
    aes.decrypt(nonce, aes.encrypt(nonce, data, None), None)
    return (time.perf_counter() - t0) / (mb / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64, help="MiB per frame")
    parser.add_argument("--reps", type=int, default=5, help="frames each way per run")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_links"))
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "tls": []}
    with tempfile.TemporaryDirectory() as tmp:
        ca = Path(tmp)
        make_consortium_ca(ca)
        for _ in range(2):  # alternate, so a drift of the machine falls on both
            runs["plain"].append(exchange(None, args.mb, args.reps))
            runs["tls"].append(exchange(ca, args.mb, args.reps))
    best = {k: min(v, key=lambda r: r["wall_s_per_gib"]) for k, v in runs.items()}
    extra = best["tls"]["wall_s_per_gib"] - best["plain"]["wall_s_per_gib"]
    result = {
        "machine": machine_facts(),
        "frame_mib": args.mb,
        "frames_each_way": args.reps,
        "runs": runs,
        "best": best,
        "tls_extra_wall_s_per_gib": extra,
        "ratio_tls_to_plain": best["tls"]["wall_s_per_gib"] / best["plain"]["wall_s_per_gib"],
        "aes_256_gcm_encrypt_decrypt_s_per_gib": cipher_floor(args.mb),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {k: result[k] for k in ("best", "tls_extra_wall_s_per_gib", "ratio_tls_to_plain")}
    summary["aes_256_gcm_encrypt_decrypt_s_per_gib"] = result[
        "aes_256_gcm_encrypt_decrypt_s_per_gib"
    ]
    write_benchmark(result, args.out / "bench_links.json", summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
