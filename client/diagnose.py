"""The data owner's encrypted diagnosis client.

``python -m client.diagnose IMAGE_OR_FOLDER... --service HOST:PORT [--json OUT] [overrides]``
(``client.credentials=DIR``: this hospital's data-owner certificate, key and the CA)

Reads PNG, JPEG, DICOM or NIfTI files (or every such file under a folder), applies exactly
the preprocessing the model was trained with (announced by the service, from the
checkpoint's config), and runs one CrypTen session with the service: the images are
secret-shared from this process and only this process learns the outputs. The service
never sees an image or a prediction; this side never sees the weights.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mpc.channel import tls
from mpc.channel.certs import DATA_OWNER, MODEL_OWNER, PartyCredentials
from mpc.channel.session import Endpoints
from mpc.inference import wire
from mpc.inference.device import CPU, party_device
from mpc.inference.fidelity import probabilities
from mpc.inference.model import check_targets
from mpc.inference.party import Channel, Session, prepare_data_owner, run_data_owner
from mpc.inference.process import PartyError, PreparedParty
from task.config import compose_config
from task.constants import IMAGE_SUFFIXES
from task.data.errors import BadFileError, printable
from task.data.files import ImageReader
from task.data.listing import is_image_file
from task.data.preprocess import preprocess_one


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every image file under a given folder (sorted)."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                raise BadFileError(item, f"folder has no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise BadFileError(item, "no such file or folder")
    return paths


def read_images(
    paths: Sequence[Path], config: dict[str, Any], *, skip_bad: bool = False
) -> tuple[np.ndarray, list[Path], list[dict[str, str]]]:
    """Read and preprocess ``paths`` as the model's config says; returns the batch, the
    paths kept and the skipped files with their reasons (only when ``skip_bad``). A bad
    file is refused with a :class:`BadFileError` naming it (printably, whatever its name)."""
    reader = ImageReader(channels=int(config["channels"]))
    preprocess = instantiate(config["preprocess"])
    images, kept, skipped = [], [], []
    for path in paths:
        try:
            image = reader(path)
            try:
                images.append(preprocess_one(image, preprocess))
            except Exception as err:  # a transform failing on this image: name the file
                raise BadFileError(path, f"preprocessing failed: {err}") from err
        except BadFileError as err:
            if not skip_bad:
                raise
            skipped.append({"path": err.path, "reason": err.reason})
            continue
        kept.append(path)
    if not images:
        raise BadFileError(paths[0] if paths else Path("."), "no readable image to diagnose")
    return np.stack(images), kept, skipped


class ServiceConnection:
    """The control connection to a model-owner service (a context manager).

    On entering, reads the service's hello: the public architecture and preprocessing,
    checked to name only MONAI networks and transforms before anything is built from it.
    """

    def __init__(
        self,
        address: str,
        creds: PartyCredentials | None,
        timeout: float = 900.0,
        device: torch.device = CPU,
    ) -> None:
        self.host, self.port = wire.parse_address(address)
        self.creds = creds  # None: --insecure
        self.timeout = timeout
        self.device = device  # where this side's CrypTen party computes
        self.sock: socket.socket | None = None
        self.hello: dict[str, Any] = {}

    def __enter__(self) -> ServiceConnection:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as err:
            raise ConnectionError(
                f"cannot reach the service at {self.host}:{self.port}: {err}"
            ) from err
        try:
            self.sock = tls.secure_client(raw, self.creds, self.host, MODEL_OWNER)
        except (ssl.SSLError, tls.ChannelRefused) as err:
            raw.close()
            raise ConnectionError(f"the service at {self.host}:{self.port}: {err}") from err
        self.hello = wire.recv(self.sock, expect="hello")
        wire.check_version(self.hello)
        check_targets(self.hello["config"])
        return self

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            self.sock.close()

    @property
    def config(self) -> dict[str, Any]:
        return self.hello["config"]

    def _service_verdict(self) -> str:
        """The service's account of a failed session (its own party's error), if it sends one."""
        self.sock.settimeout(30)
        try:
            done = wire.recv(self.sock, expect="done")
        except (OSError, wire.ProtocolError) as err:
            return f"no report ({err})"
        return done.get("message") or done.get("status", "")

    def _session(self, reply: dict[str, Any], n_images: int, batch: int) -> Session:
        """The session the service announced; no plaintext session over a TLS client."""
        transport = "plain" if self.creds is None else "tls"
        if reply.get("transport") != transport:
            raise wire.ProtocolError(
                f"the service offers a {reply.get('transport')!r} session; this client "
                f"speaks {transport!r} only"
            )
        endpoints = Endpoints(str(reply["model_owner"]), str(reply["dealer"]))
        return Session(n_images, batch, transport, str(reply["session_id"]), endpoints)

    def run(self, images: np.ndarray, batch: int) -> dict[str, Any]:
        """One encrypted session over ``images`` (preprocessed); returns the logits, the
        per-batch seconds and CrypTen's communication counts at this party."""
        if self.sock is None:
            raise RuntimeError("use ServiceConnection as a context manager")
        batch = max(1, min(batch, int(self.hello["max_batch"]), len(images)))
        party = PreparedParty(
            "data-owner",
            prepare_data_owner,
            run_data_owner,
            (
                self.config,
                np.ascontiguousarray(images, dtype=np.float32),
                self.hello["graph"],
                Channel(self.creds, timeout=self.timeout),
                self.device,
            ),
        )
        try:
            party.wait_ready(self.timeout)
            wire.send(
                self.sock,
                {
                    "type": "request",
                    "version": wire.VERSION,
                    "n_images": len(images),
                    "batch": batch,
                },
            )
            session = self._session(wire.recv(self.sock, expect="session"), len(images), batch)
            t0 = time.perf_counter()
            party.start(session)
            try:
                result = party.result(self.timeout)
            except PartyError as err:
                raise PartyError(f"{err}\nservice: {self._service_verdict()}") from err
            result["session_seconds"] = time.perf_counter() - t0
            done = wire.recv(self.sock, expect="done")
            if done["status"] != "ok":
                raise wire.ProtocolError(f"service reports the session failed: {done['message']}")
            return result
        finally:
            party.kill()


def diagnose(
    inputs: Sequence[str | Path],
    service: str,
    settings: DictConfig,
    *,
    skip_bad: bool = False,
    insecure: bool = False,
) -> dict[str, Any]:
    """Encrypted diagnosis of the image files ``inputs`` by the service at ``service``."""
    device = party_device(settings.get("device"), "client.device")  # before any connection
    paths = collect_images(inputs)
    creds = tls.credentials(settings.credentials, DATA_OWNER, insecure=insecure)
    with ServiceConnection(service, creds, float(settings.timeout), device) as conn:
        images, kept, skipped = read_images(paths, conn.config, skip_bad=skip_bad)
        result = conn.run(images, int(settings.batch))
    classes = list(conn.config["classes"])
    probs = probabilities(result["logits"])
    n = len(kept)
    return {
        "service": service,
        "classes": classes,
        "images": [
            {
                "path": printable(str(path)),
                "prediction": classes[int(p.argmax())],
                "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
            }
            for path, p in zip(kept, probs, strict=True)
        ],
        "skipped": skipped,
        "encrypted_seconds_per_image": sum(result["batch_seconds"]) / n,
        "session_seconds": result["session_seconds"],
        "bytes_per_image_at_data_owner": result["inference"]["bytes"] / n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files or folders, then overrides")
    parser.add_argument("--service", required=True, help="HOST:PORT of the model owner")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--skip-bad", action="store_true", help="report and skip unreadable images")
    parser.add_argument("--insecure", action="store_true", help="plain TCP: local experiments")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    overrides = [a for a in args.inputs if "=" in a and not Path(a).exists()]
    inputs = [a for a in args.inputs if a not in overrides]
    settings = compose_config(overrides, config_name="inference").client
    try:
        out = diagnose(
            inputs, args.service, settings, skip_bad=args.skip_bad, insecure=args.insecure
        )
    except (BadFileError, ConnectionError, wire.ProtocolError, PartyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for item in out["images"]:
        probs = "  ".join(f"{c} {p:.3f}" for c, p in item["probabilities"].items())
        print(f"{item['path']}: {item['prediction']}  ({probs})")
    for item in out["skipped"]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    print(
        f"{len(out['images'])} image(s), encrypted, {out['encrypted_seconds_per_image']:.2f} s "
        "per image",
        file=sys.stderr,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
