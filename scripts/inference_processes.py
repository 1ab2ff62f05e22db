"""The encrypted-diagnosis services as child processes, for the demo, benchmarks and tests.

``ServiceProcess`` runs ``server.serve_inference`` (the model owner), ``DealerProcess``
runs ``server.dealer`` (a third organisation's), each on a free port of 127.0.0.1 with its
own certificate; :func:`consortium` makes a CA and the three parties' certificates.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from mpc.channel.certs import ROLES, issue_party, make_consortium_ca
from mpc.parties import free_port
from task.constants import REPO_ROOT


def consortium(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, Path]:
    """A consortium CA in ``folder/ca`` and one credentials folder per role
    (``folder/<role>``: ``ca.pem``, ``<role>.pem``, ``<role>.key``), for ``hosts``."""
    make_consortium_ca(folder / "ca", overwrite=True)
    parties = {role: issue_party(folder / "ca", folder / role, role, hosts) for role in ROLES}
    return {role: creds.cert.parent for role, creds in parties.items()}


class ReadyProcess:
    """A child process that prints ``ready`` (a line starting with it) once it listens;
    a context manager that stops it on exit."""

    ready = ""

    def __init__(self, args: list[str], ready_timeout: float = 300.0) -> None:
        self.args, self.ready_timeout = args, ready_timeout
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []  # every line, for a failure's report
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            self.args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith(self.ready):
                return self
            if line.startswith("error: "):
                break
        self.__exit__()
        raise RuntimeError(f"{self.args} did not start: {self.tail()}")

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.seen.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.seen[-n:])

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class DealerProcess(ReadyProcess):
    """``python -m server.dealer``; ``address`` is its ``HOST:PORT``."""

    ready = "dealer listening on "

    def __init__(self, credentials: Path | None, extra: list[str] = (), **kwargs) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        auth = ["--insecure"] if credentials is None else [f"dealer.credentials={credentials}"]
        args = [
            *(sys.executable, "-m", "server.dealer", f"dealer.listen={self.address}"),
            *(*auth, *extra),
        ]
        super().__init__(args, **kwargs)


class ServiceProcess(ReadyProcess):
    """``python -m server.serve_inference`` with the dealer at ``dealer``; ``address`` is
    its control channel's ``HOST:PORT``."""

    ready = "serving "

    def __init__(
        self,
        checkpoint: str | Path,
        dealer: str,
        credentials: Path | None,
        overrides: list[str] = (),
        **kwargs,
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        auth = ["--insecure"] if credentials is None else [f"service.credentials={credentials}"]
        args = [
            *(sys.executable, "-m", "server.serve_inference", "--model", str(checkpoint)),
            *(f"service.port={self.port}", f"service.dealer={dealer}", *auth, *overrides),
        ]
        super().__init__(args, **kwargs)
