"""The model owner's encrypted-diagnosis service.

``python -m server.serve_inference --model CHECKPOINT [--insecure] [overrides of conf/inference]``

Holds a trained checkpoint and serves request after request without restarting: for each
client it announces the public architecture and preprocessing, then runs one CrypTen
session (a model-owner party in a process of its own, prepared ahead of time) in which
the client's images and the model's weights are both secret-shared and only the client
learns the outputs. The dealer is another organisation's service (:mod:`server.dealer`),
which the service names to the client. Every connection, the control channel included,
is mutually authenticated TLS 1.3 with the consortium's certificates; ``--insecure``
(plain TCP) is for local experiments only. A session that fails or runs past its timeout
is killed and logged; the service goes on with the next client.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import secrets
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mpc.channel import tls
from mpc.channel.certs import DATA_OWNER, MODEL_OWNER, PartyCredentials
from mpc.channel.session import Endpoints
from mpc.inference import wire
from mpc.inference.device import party_device
from mpc.inference.model import ModelNotServable, Served, load_served
from mpc.inference.party import (
    Channel,
    Session,
    convert,
    graph_signature,
    prepare_model_owner,
    run_model_owner,
)
from mpc.inference.process import PartyError, PreparedParty
from mpc.parties import free_port
from task.config import compose_config

log = logging.getLogger("serve_inference")


class RequestRefused(ValueError):
    """A client's request that breaks the service's limits, with the bad value."""


class InferenceService:
    """One model, many sessions, one at a time.

    Args:
        checkpoint: ``best.pt`` / ``final.pt`` written by training.
        settings: the ``service`` node of ``conf/inference.yaml``.
    """

    def __init__(
        self, checkpoint: str | Path, settings: DictConfig, creds: PartyCredentials | None
    ) -> None:
        # first: a device this machine lacks is refused before anything is loaded or started
        self.device = party_device(settings.get("device"), "service.device")
        self.checkpoint = Path(checkpoint)
        self.settings = settings
        self.creds = creds  # None: --insecure
        self.transport = "plain" if creds is None else "tls"
        wire.parse_address(str(settings.dealer))  # a bad dealer address fails at start
        self.dealer = str(settings.dealer)
        self.served: Served = load_served(self.checkpoint)
        try:
            graph = convert(self.served.model, self.served.input_shape)
        except Exception as err:  # the ONNX export or CrypTen's converter, any type
            raise ModelNotServable(self.checkpoint, f"CrypTen cannot convert it: {err}") from err
        self.hello = {
            "type": "hello",
            "version": wire.VERSION,
            "config": self.served.config,
            "graph": graph_signature(graph),
            "max_images": int(settings.max_images),
            "max_batch": int(settings.max_batch),
            "session_timeout": float(settings.session_timeout),
            "seconds_per_image": float(settings.seconds_per_image),
        }
        self._spare: PreparedParty | None = None
        self._ids = itertools.count(1)

    def _prepare(self) -> PreparedParty:
        channel = Channel(self.creds, str(self.settings.host), float(self.settings.session_timeout))
        args = (str(self.checkpoint), channel, self.device)
        return PreparedParty("model-owner", prepare_model_owner, run_model_owner, args)

    def session_timeout(self, n_images: int) -> float:
        """Seconds a session over ``n_images`` may take."""
        return (
            float(self.settings.session_timeout) + float(self.settings.seconds_per_image) * n_images
        )

    def _check_request(self, request: dict[str, Any]) -> Session:
        wire.check_version(request)
        n, batch = request.get("n_images"), request.get("batch")
        if type(n) is not int or not 1 <= n <= self.settings.max_images:
            raise RequestRefused(f"n_images={n!r} must be 1..{self.settings.max_images}")
        if type(batch) is not int or not 1 <= batch <= self.settings.max_batch:
            raise RequestRefused(f"batch={batch!r} must be 1..{self.settings.max_batch}")
        port = int(self.settings.session_port) or free_port(self.settings.host)
        owner = f"{self.settings.advertise_host}:{port}"
        return Session(
            n,
            batch,
            transport=self.transport,
            session_id=secrets.token_hex(16),
            endpoints=Endpoints(model_owner=owner, dealer=self.dealer),
        )

    def handle(self, conn: socket.socket, peer: str) -> dict[str, Any]:
        """Serve one client; returns the session's record (never images or outputs)."""
        sid = next(self._ids)
        record: dict[str, Any] = {"session": sid, "peer": peer, "status": "error"}
        conn.settimeout(float(self.settings.session_timeout))
        owner = self._spare or self._prepare()
        self._spare = None
        try:
            _, conn = tls.secure_server(conn, self.creds, [DATA_OWNER])
            wire.send(conn, self.hello)
            try:
                session = self._check_request(wire.recv(conn, expect="request"))
            except (RequestRefused, wire.ProtocolError) as err:
                wire.send(conn, {"type": "error", "message": str(err)})
                raise
            record.update(n_images=session.n_images, batch=session.batch)
            owner.wait_ready(float(self.settings.prepare_timeout))
            t0 = time.perf_counter()
            owner.start(session)
            wire.send(conn, session_message(session, sid))
            stats = owner.result(self.session_timeout(session.n_images))
            record.update(status="ok", wall_seconds=time.perf_counter() - t0, **stats)
            wire.send(conn, {"type": "done", "status": "ok", "message": ""})
        except (PartyError, wire.ProtocolError, RequestRefused, OSError, ssl.SSLError) as err:
            # "<party> failed:" and the exception's last line (a traceback follows the first)
            lines = str(err).strip().splitlines() or [type(err).__name__]
            record["error"] = " ".join(dict.fromkeys([lines[0], lines[-1]]))[:400]
            if "n_images" in record:  # the session had started: tell the client it failed
                with contextlib.suppress(OSError):  # unless the client is already gone
                    wire.send(conn, {"type": "done", "status": "error", "message": record["error"]})
        finally:
            owner.kill()
            # the next session's party starts preparing now, while no one is waiting
            self._spare = self._prepare()
        return record

    def serve(self, max_sessions: int | None = None) -> list[dict[str, Any]]:
        """Accept clients until ``max_sessions`` were served (forever when ``None``)."""
        records: list[dict[str, Any]] = []
        self._spare = self._prepare()
        with socket.create_server((self.settings.host, int(self.settings.port))) as server:
            host, port = server.getsockname()[:2]
            print(f"serving {self.checkpoint} on {host}:{port}", flush=True)
            try:
                while max_sessions is None or len(records) < max_sessions:
                    conn, addr = server.accept()
                    peer = f"{addr[0]}:{addr[1]}"
                    try:
                        with conn:
                            record = self.handle(conn, peer)
                    except Exception:  # a fault in one session must not end the service
                        log.exception("session with %s failed unexpectedly", peer)
                        record = {"session": None, "peer": peer, "status": "error"}
                    records.append(record)
                    log.info("session %s", record)
                    print(f"session {record['session']}: {record['status']}", flush=True)
            finally:
                if self._spare is not None:
                    self._spare.kill()
        return records


def session_message(session: Session, sid: int) -> dict[str, Any]:
    """What the client needs to join: the transport, the session's name and endpoints."""
    return {
        "type": "session",
        "session": sid,
        "transport": session.transport,
        "session_id": session.session_id,
        "model_owner": session.endpoints.model_owner,
        "dealer": session.endpoints.dealer,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint written by training")
    parser.add_argument("--max-sessions", type=int, default=None, help="stop after N sessions")
    parser.add_argument("--insecure", action="store_true", help="plain TCP: local experiments")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/inference.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    settings = compose_config(args.overrides, config_name="inference").service
    try:
        creds = tls.credentials(settings.credentials, MODEL_OWNER, insecure=args.insecure)
        service = InferenceService(args.model, settings, creds)
    except (ModelNotServable, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # SIGTERM ends the service like Ctrl-C: the prepared party process is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    service.serve(args.max_sessions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
