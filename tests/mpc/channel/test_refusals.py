"""Security claims (b) and (c): who may take a party's place, and a man in the middle.

(b) The model owner's session port and the dealer's port each refuse four kinds of
connection: plaintext, TLS without a certificate, a certificate of another CA, and a
certificate of the consortium for the wrong role; the session then does not start. The
control opens the same port without TLS (``--insecure``): the plaintext intruder that
claims the data owner's role is let in.
(c) A man in the middle presenting its own certificate, of another CA or of the
consortium for another role, is refused by the data owner before it says anything; the
control, without TLS, hands the relay the session's name.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from mpc.channel import tls
from mpc.channel.certs import DATA_OWNER, DEALER, MODEL_OWNER, PartyCredentials
from mpc.channel.session import listen
from mpc.inference import wire
from mpc.parties import free_port
from scripts.inference_processes import DealerProcess, consortium
from tests.mpc.channel.tap import Tap

SESSION = "session-under-attack"


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict[str, Path]:
    return consortium(tmp_path_factory.mktemp("ours"))


@pytest.fixture(scope="module")
def theirs(tmp_path_factory) -> dict[str, Path]:
    """Another consortium's CA and certificates, for every role."""
    return consortium(tmp_path_factory.mktemp("theirs"))


def _creds(folders: dict[str, Path], role: str) -> PartyCredentials:
    return PartyCredentials.from_folder(folders[role], role)


def _plaintext(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        wire.send(sock, {"type": "join", "session": SESSION, "role": DATA_OWNER})
        wire.recv(sock, expect="joined")


def _no_certificate(address: tuple[str, int], ca: Path) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca))
    raw = socket.create_connection(address, timeout=10)
    with ctx.wrap_socket(raw, server_hostname=address[0]) as sock:
        wire.send(sock, {"type": "join", "session": SESSION, "role": DATA_OWNER})
        wire.recv(sock, expect="joined")


def _intruders(ours, theirs, expect: str) -> dict[str, object]:
    """Each intruder as a call on an address; each must fail."""
    return {
        "plaintext": _plaintext,
        "no certificate": lambda a: _no_certificate(a, ours[DATA_OWNER] / "ca.pem"),
        "another CA": lambda a: tls.connect(
            a, _creds(theirs, DATA_OWNER), expect, SESSION, DATA_OWNER, 10
        ),
        # a genuine consortium certificate, but a dealer's: neither port admits a dealer
        "wrong role": lambda a: tls.connect(
            a, _creds(ours, DEALER), expect, SESSION, DATA_OWNER, 10
        ),
    }


REFUSED = (ConnectionError, ssl.SSLError, wire.ProtocolError, OSError)


def test_the_model_owners_port_refuses_four_intruders_and_the_session_does_not_start(
    ours, theirs
) -> None:
    listener = listen(f"127.0.0.1:{free_port()}")
    address = listener.getsockname()[:2]
    outcome: dict[str, object] = {}

    def wait_for_the_data_owner() -> None:
        try:
            outcome["joined"] = tls.accept(
                listener, _creds(ours, MODEL_OWNER), [DATA_OWNER], SESSION, 15
            )
        except tls.ChannelRefused as err:
            outcome["refused"] = str(err)

    thread = threading.Thread(target=wait_for_the_data_owner)
    thread.start()
    for name, intrude in _intruders(ours, theirs, MODEL_OWNER).items():
        with pytest.raises(REFUSED):
            intrude(address)
        assert thread.is_alive(), f"the listener stopped at the {name} intruder"
    thread.join(timeout=30)
    listener.close()
    assert "joined" not in outcome
    assert outcome["refused"] == "no authenticated data-owner within 15 s"


def test_control_an_insecure_port_lets_the_plaintext_intruder_in() -> None:
    listener = listen(f"127.0.0.1:{free_port()}")
    outcome: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: outcome.update(tls.accept(listener, None, [DATA_OWNER], SESSION, 15))
    )
    thread.start()
    _plaintext(listener.getsockname()[:2])
    thread.join(timeout=30)
    listener.close()
    assert set(outcome) == {DATA_OWNER}  # anyone who claims the role takes the place


def test_the_dealers_port_refuses_four_intruders_and_deals_nothing(ours, theirs) -> None:
    with DealerProcess(ours[DEALER], ["dealer.session_timeout=5"]) as dealer:
        address = wire.parse_address(dealer.address)
        for intrude in _intruders(ours, theirs, DEALER).values():
            with pytest.raises(REFUSED):
                intrude(address)
        # a genuine model owner joins; its data owner's place stays empty
        tls.connect(address, _creds(ours, MODEL_OWNER), DEALER, SESSION, MODEL_OWNER, 10)
        lines = [dealer.lines.get(timeout=30) for _ in range(4)]
    assert all(" refused 127.0.0.1:" in line for line in lines), lines
    assert not any("dealing" in line for line in dealer.seen)


def test_a_man_in_the_middle_with_its_own_certificate_is_refused(ours, theirs) -> None:
    # another CA's model-owner certificate; a hospital's genuine data-owner certificate
    for folders, role in ((theirs, MODEL_OWNER), (ours, DATA_OWNER)):
        mitm = _creds(folders, role)

        def present(client: socket.socket, mitm=mitm) -> None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(mitm.cert), str(mitm.key))
            with ctx.wrap_socket(client, server_side=True) as sock:
                wire.recv(sock, expect="join")  # what it would relay, if it got any

        tap = Tap(("127.0.0.1", free_port()), intercept=present)
        with pytest.raises(REFUSED, match=r"certificate verify failed|not the model-owner"):
            tls.connect(
                wire.parse_address(tap.address),
                _creds(ours, DATA_OWNER),
                MODEL_OWNER,
                SESSION,
                DATA_OWNER,
                10,
            )
        tap.close()


def test_control_without_tls_the_relay_reads_the_session_name() -> None:
    upstream = listen(f"127.0.0.1:{free_port()}")
    thread = threading.Thread(
        target=lambda: tls.accept(upstream, None, [DATA_OWNER], SESSION, 15), daemon=True
    )
    thread.start()
    tap = Tap(upstream.getsockname()[:2])
    tls.connect(wire.parse_address(tap.address), None, MODEL_OWNER, SESSION, DATA_OWNER, 10)
    thread.join(timeout=30)
    assert SESSION.encode() in tap.recording()
    tap.close()
    upstream.close()
