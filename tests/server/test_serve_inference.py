"""The model-owner service, the dealer and the data-owner client as real processes.

Every connection is TLS with the certificates of one test consortium. One service process
(with one dealer process) serves most tests of this module in turn, so the tests also check
that it keeps serving after clients that vanish or misbehave. The secrecy test runs the
service class in this process instead, to observe its model-owner party from inside.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from client import diagnose
from client.diagnose import ServiceConnection
from client.diagnose import main as diagnose_main
from mpc.channel import tls
from mpc.channel.certs import DATA_OWNER, DEALER, MODEL_OWNER, PartyCredentials
from mpc.inference import wire
from mpc.inference.fidelity import agreement, plaintext_probabilities, probabilities
from mpc.inference.model import load_served
from mpc.inference.party import run_data_owner
from mpc.inference.process import PartyError
from scripts.inference_processes import DealerProcess, ServiceProcess, consortium
from server import serve_inference
from server.serve_inference import InferenceService
from task.config import compose_config
from task.constants import REPO_ROOT
from task.data.export import export_test_images
from task.data.pneumoniamnist import load_npz
from tests.mpc.inference.observe import leaked, observer

SESSION_TIMEOUT = 30


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return consortium(tmp_path_factory.mktemp("consortium"))


@pytest.fixture(scope="module")
def me(folders) -> PartyCredentials:
    """The data owner's credentials: what every client of these tests presents."""
    return PartyCredentials.from_folder(folders[DATA_OWNER], DATA_OWNER)


@pytest.fixture(scope="module")
def dealer(folders):
    with DealerProcess(folders[DEALER]) as proc:
        yield proc.address


@pytest.fixture(scope="module")
def service(trained_checkpoint, folders, dealer):
    overrides = [f"service.session_timeout={SESSION_TIMEOUT}", "service.max_images=700"]
    with ServiceProcess(trained_checkpoint, dealer, folders[MODEL_OWNER], overrides) as proc:
        yield proc.address


def _control(address: str, me: PartyCredentials) -> socket.socket:
    """A raw control channel to the service, authenticated as the data owner."""
    host, port = wire.parse_address(address)
    raw = socket.create_connection((host, port), timeout=60)
    return tls.secure_client(raw, me, host, MODEL_OWNER)


def _test_images(config: dict, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` test images, preprocessed as the checkpoint says."""
    from task.data.pneumoniamnist import resolve_path
    from task.data.preprocess import preprocess_array

    images, labels = load_npz(resolve_path(None))["test"]
    batch = preprocess_array(images[:count], instantiate(config["preprocess"]))
    return batch, labels[:count]


def _plaintext_probs(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    return plaintext_probabilities(load_served(checkpoint).model, images)


def test_encrypted_diagnosis_matches_plaintext(service, me, trained_checkpoint) -> None:
    address = service
    with ServiceConnection(address, me) as conn:
        images, _ = _test_images(conn.config, 10)
        result = conn.run(images, batch=4)  # batches of 4, 4 and 2 from one converted graph
    plain = _plaintext_probs(trained_checkpoint, images)
    encrypted = probabilities(result["logits"])
    assert encrypted.shape == plain.shape == (10, 2)
    assert np.array_equal(encrypted.argmax(1), plain.argmax(1))
    assert np.abs(encrypted - plain).max() < 0.01
    assert len(result["batch_seconds"]) == 3
    assert result["inference"]["bytes"] > 0


@pytest.mark.parametrize(
    "reveal", ["production", "to-all"], ids=["reveal-to-data-owner", "control-to-all"]
)
def test_the_service_never_opens_the_prediction(
    trained_checkpoint, folders, me, dealer, monkeypatch, reveal
) -> None:
    """Secrecy at the service: its model-owner party opens nothing that is the client's
    logits. The service class (:class:`InferenceService`, its ``handle`` for one client,
    its spawned model owner; the dealer is its own service) runs in this process and a
    real client connects over TLS; both CrypTen parties are the production functions,
    observed from inside their processes (``tests/mpc/inference/observe.py``). The
    control (``to-all``) makes every reveal go to all parties, as a service that forgot
    ``dst`` would: the model owner's openings then hold the logits, so the check can
    fail."""
    width = 2  # normal, pneumonia
    monkeypatch.setattr(
        serve_inference,
        "run_model_owner",
        observer(serve_inference.run_model_owner, width, reveal=reveal),
    )
    monkeypatch.setattr(diagnose, "run_data_owner", observer(run_data_owner, width, reveal=reveal))
    settings = compose_config([f"service.dealer={dealer}"], config_name="inference").service
    owner = PartyCredentials.from_folder(folders[MODEL_OWNER], MODEL_OWNER)
    service = InferenceService(trained_checkpoint, settings, owner)
    served: dict = {}
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"

        def serve_one() -> None:
            conn, addr = server.accept()
            with conn:
                served["record"] = service.handle(conn, f"{addr[0]}:{addr[1]}")

        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        try:
            with ServiceConnection(address, me) as conn:
                images, _ = _test_images(conn.config, 4)
                result = conn.run(images, batch=4)
            thread.join(timeout=120)
        finally:
            if service._spare is not None:  # the next session's, prepared in advance
                service._spare.kill()
    assert not thread.is_alive()
    record = served["record"]
    assert record["status"] == "ok", record
    logits = result["result"]["logits"]
    plain = _plaintext_probs(trained_checkpoint, images)
    assert np.array_equal(probabilities(logits).argmax(1), plain.argmax(1))
    assert record["opened"], "the observer saw no opening at the model owner"
    assert leaked(record["opened"], logits) is (reveal == "to-all")
    if reveal == "production":  # nor does anything it received or left in a buffer
        assert not leaked(record["buffers"] + record["received"], logits)
    # what the service's own party function returns (and the service logs): counts only
    assert set(record["result"]) == {"model_sharing", "inference", "seconds"}


def test_service_survives_vanished_and_misbehaving_clients(service, me, trained_checkpoint) -> None:
    address = service
    # 1. reads the hello and vanishes
    with _control(address, me) as sock:
        assert wire.recv(sock, expect="hello")["config"]["classes"] == ["normal", "pneumonia"]
    # 2. asks for something the service refuses, and is told what was wrong
    with _control(address, me) as sock:
        wire.recv(sock, expect="hello")
        wire.send(sock, {"type": "request", "version": wire.VERSION, "n_images": 0, "batch": 1})
        with pytest.raises(wire.ProtocolError, match=r"n_images=0 must be 1\.\.700"):
            wire.recv(sock, expect="session")
    # 3. starts a session and never joins it: the service times the session out
    with _control(address, me) as sock:
        wire.recv(sock, expect="hello")
        wire.send(sock, {"type": "request", "version": wire.VERSION, "n_images": 2, "batch": 2})
        assert wire.recv(sock, expect="session")["model_owner"].startswith("127.0.0.1:")
    t0 = time.monotonic()
    # 4. the next client is served correctly once that session has been given up
    with ServiceConnection(address, me) as conn:
        images, _ = _test_images(conn.config, 3)
        result = conn.run(images, batch=3)
    # it waited for that session's timeout (30 s + 2 s per image) before serving this one
    assert time.monotonic() - t0 >= SESSION_TIMEOUT
    plain = _plaintext_probs(trained_checkpoint, images)
    assert np.array_equal(probabilities(result["logits"]).argmax(1), plain.argmax(1))


def test_client_command_diagnoses_png_files(service, me, trained_checkpoint, tmp_path) -> None:
    address = service
    files = export_test_images(tmp_path / "images", 4)
    (tmp_path / "images" / "notes.txt").write_text("not an image")  # ignored: not an image
    out = tmp_path / "diagnosis.json"
    mine = f"client.credentials={me.cert.parent}"
    args = [str(tmp_path / "images"), "--service", address, "--json", str(out), mine]
    assert diagnose_main(args) == 0
    report = json.loads(out.read_text())
    assert [Path(item["path"]).name for item in report["images"]] == [f.name for f in files]
    # the PNG files, read and preprocessed by the client, give the plaintext model's answers
    with ServiceConnection(address, me) as conn:
        images, _ = _test_images(conn.config, 4)
    plain = _plaintext_probs(trained_checkpoint, images)
    for item, p in zip(report["images"], plain, strict=True):
        assert item["prediction"] == ["normal", "pneumonia"][int(p.argmax())]
        assert abs(item["probabilities"]["pneumonia"] - p[1]) < 0.01


def test_unservable_model_stops_the_service_with_its_name(tmp_path, trained_checkpoint) -> None:
    from task.runtime import checkpoint

    bad = tmp_path / "weights_only.pt"
    checkpoint.save_atomic({"model": checkpoint.load(trained_checkpoint)["model"]}, bad)
    proc = subprocess.run(
        [sys.executable, "-m", "server.serve_inference", "--model", str(bad), "--insecure"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "weights_only.pt: has no inference config" in proc.stderr


def test_a_device_this_machine_lacks_stops_the_service_before_any_party(
    monkeypatch, capsys, trained_checkpoint
) -> None:
    """``service.device`` is checked first: one line naming the key and the value, before
    the model is loaded or a model-owner party is prepared."""
    started: list = []
    monkeypatch.setattr(serve_inference, "PreparedParty", lambda *a, **k: started.append(a))
    monkeypatch.setattr(serve_inference, "load_served", lambda *a: started.append(a))
    values = ["cuda:99", "mps", "gpu"] + (["cuda"] if not torch.cuda.is_available() else [])
    for value in values:
        argv = ["--model", str(trained_checkpoint), "--insecure", f"service.device={value}"]
        assert serve_inference.main(argv) == 2
        err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("WARNING")]
        assert len(err) == 1 and err[0].startswith(f"error: service.device={value!r}"), err
    assert not started


@pytest.mark.slow
def test_whole_test_split_agrees_with_plaintext(service, me, trained_checkpoint) -> None:
    """Issue acceptance: >= 99.5 % agreement on all 624 PneumoniaMNIST test images."""
    address = service
    with ServiceConnection(address, me) as conn:
        images, _ = _test_images(conn.config, 10_000)
        result = conn.run(images, batch=32)
    plain = _plaintext_probs(trained_checkpoint, images)
    fidelity = agreement(probabilities(result["logits"]), plain)
    print(
        f"agreement {fidelity['agreement']:.4f} on {len(images)} images; "
        f"max |p error| {fidelity['max_abs_probability_error']:.2e}"
    )
    assert len(images) == 624
    assert fidelity["agreement"] >= 0.995


def _hung_up(sock: socket.socket) -> bool:
    """The peer closed the connection (a reset, when it left our bytes unread)."""
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, ssl.SSLError):  # a TLS peer gone without close_notify
        return True


def test_garbage_bytes_are_dropped_and_the_next_client_is_served(service, me) -> None:
    # a client without TLS is dropped at the handshake
    with socket.create_connection(wire.parse_address(service), timeout=60) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _hung_up(sock)
    garbage_frames = {
        # a length prefix of 1.2 GB; the service hangs up with our bytes unread, and the
        # reset may overtake its error reply
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n": r"announced a message of \d+ bytes|closed",
        struct.pack("!I", 8) + b"\x00garbage": "peer refused: peer sent a message that is not JSON",
        struct.pack("!I", 2) + b"[]": r"peer refused: peer sent '\[\]', not a typed message",
    }
    for garbage, reason in garbage_frames.items():
        with _control(service, me) as sock:
            wire.recv(sock, expect="hello")
            sock.sendall(garbage)
            with pytest.raises(wire.ProtocolError, match=reason):
                wire.recv(sock, expect="session")
            assert _hung_up(sock)
    with ServiceConnection(service, me) as conn:
        images, _ = _test_images(conn.config, 2)
        assert conn.run(images, batch=2)["logits"].shape == (2, 2)


def _stall_after_first_batch(signal: str, state: dict, session) -> dict:
    """The production data owner, which touches the file ``signal`` once its first
    encrypted batch is revealed (the session is connected, MPC under way) and then stalls
    in the middle of the inference until it is killed."""
    from mpc.inference import party

    reveal = party.reveal_to_data_owner

    def reveal_then_stall(y, rank):
        out = reveal(y, rank)
        Path(signal).touch()
        time.sleep(600)
        return out

    party.reveal_to_data_owner = reveal_then_stall
    return run_data_owner(state, session)


def test_a_party_killed_mid_inference_is_reported_and_the_service_goes_on(
    service, me, monkeypatch, tmp_path
) -> None:
    """Fault: the data owner's CrypTen party dies while the encrypted inference runs. The
    model owner's party notices the lost TCP peer, the service reports the failed session
    to the client, and the next client is served. The data owner is killed only after it
    signals that its first batch is done, and it waits there, so the kill always lands
    mid-session, however fast or slow the machine."""
    n_images = 4
    signal = tmp_path / "first-batch-done"
    stalling = functools.partial(_stall_after_first_batch, str(signal))
    monkeypatch.setattr(diagnose, "run_data_owner", stalling)
    outcome: dict = {}

    def run() -> None:
        with ServiceConnection(service, me) as conn:
            images, _ = _test_images(conn.config, n_images)
            try:
                conn.run(images, batch=1)  # batches of one: the first is done, others wait
            except PartyError as err:
                outcome["error"] = str(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while not signal.exists():
        assert thread.is_alive(), f"the session ended before its first batch: {outcome}"
        assert time.monotonic() < deadline, "no encrypted batch done within 300 s"
        time.sleep(0.05)
    (party,) = [p for p in multiprocessing.active_children() if p.name == "data-owner"]
    t0 = time.monotonic()
    party.kill()
    thread.join(timeout=SESSION_TIMEOUT + 2 * n_images + 60)
    assert not thread.is_alive()
    error = outcome["error"]
    assert "data-owner died during its session" in error
    # the service's own account: its model-owner party failed, reported well before the
    # session's timeout (30 s + 2 s per image) ran out
    verdict = error.split("service: ", 1)[1]
    assert verdict.startswith("model-owner failed:"), verdict
    assert "data-owner closed the connection" in verdict or "reset by peer" in verdict, verdict
    assert time.monotonic() - t0 < SESSION_TIMEOUT + 2 * n_images
    monkeypatch.undo()
    with ServiceConnection(service, me) as conn:
        images, _ = _test_images(conn.config, 2)
        assert conn.run(images, batch=2)["logits"].shape == (2, 2)
