"""Security claim (a): a tap on the network between the parties learns nothing.

Three real party processes run one CrypTen computation that needs the dealer; a tapping
proxy sits in front of the model owner's port and in front of the dealer's, so it records
every byte of all three links. Over TLS the recording holds none of the image's bytes,
the weights, their fixed-point encodings, any party's shares or the opened result's
share, no seed (CrypTen's pairwise and global seeds, the dealer's), no word of the
protocol, and its records' payload is uniform. The control runs the same session over the
plaintext transport and the same search finds the seeds, a share and the protocol's words:
the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from mpc.channel.certs import DEALER, MODEL_OWNER
from mpc.channel.session import Endpoints
from mpc.parties import free_port, run_local_parties
from scripts.inference_processes import consortium
from tests.mpc.channel.parties import product_and_relu
from tests.mpc.channel.tap import Tap, tls_payloads

WORDS = (b"join", b"session", b"model-owner", b"function", b"additive")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return consortium(tmp_path_factory.mktemp("consortium"))


def _tapped_session(folders):
    ports = {MODEL_OWNER: free_port(), DEALER: free_port()}
    taps = {role: Tap(("127.0.0.1", port)) for role, port in ports.items()}
    endpoints = Endpoints(taps[MODEL_OWNER].address, taps[DEALER].address)
    listen_at = {role: f"127.0.0.1:{port}" for role, port in ports.items()}
    x = torch.rand(6, 8)  # the image
    w = torch.randn(6, 8)  # the weights
    args = (folders, endpoints, listen_at, "tapped-session", x, w)
    try:
        owner, data, dealer = run_local_parties(product_and_relu, 3, args, timeout=240)
    finally:
        for tap in taps.values():
            tap.close()
    streams = [bytes(s) for tap in taps.values() for s in tap.streams]
    return x, w, (owner, data, dealer), streams


def _found(recording: bytes, x, w, parties) -> set[str]:
    owner, data, dealer = parties
    encode = lambda t: (t * 2**16).round().long().numpy().tobytes()  # noqa: E731
    secrets = {
        "image": [x.numpy().tobytes(), encode(x)],
        "weights": [w.numpy().tobytes(), encode(w)],
        "shares": owner["shares"] + data["shares"],
        "seeds": owner["seeds"] + data["seeds"] + dealer["seeds"],
        "words": list(WORDS),
    }
    return {name for name, blobs in secrets.items() if any(b in recording for b in blobs)}


def _uniformity(payload: bytes) -> float:
    counts = np.bincount(np.frombuffer(payload, dtype=np.uint8), minlength=256)
    return float(chisquare(counts).pvalue)


def test_over_tls_the_tap_finds_nothing_and_the_bytes_are_uniform(folders) -> None:
    x, w, parties, streams = _tapped_session(folders)
    assert torch.allclose(parties[1]["result"], (x * w).relu(), atol=1e-3)
    recording = b"".join(streams)
    assert len(recording) > 10_000  # the tap saw the whole session
    assert _found(recording, x, w, parties) == set()
    payload = b"".join(tls_payloads(s) for s in streams)
    assert len(payload) > 0.9 * len(recording)  # almost everything is inside TLS records
    assert _uniformity(payload) > 1e-3


def test_control_over_plaintext_the_same_tap_finds_what_tls_hides() -> None:
    x, w, parties, streams = _tapped_session(None)
    assert torch.allclose(parties[1]["result"], (x * w).relu(), atol=1e-3)
    recording = b"".join(streams)
    # never sent even in the clear: the image and the weights are shared by pseudo-random
    # zero sharings; what an eavesdropper gets is the seeds that make those sharings
    assert _found(recording, x, w, parties) == {"shares", "seeds", "words"}
    assert _uniformity(recording) < 1e-6
