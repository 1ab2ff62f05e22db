"""A real Flower deployment on this machine: one SuperLink and one SuperNode per site.

It plays every organisation with their own commands' argv (the coordinator's
:func:`server.coordinator.superlink_command`, each hospital's
:func:`client.node.supernode_command` and warm executor), all on 127.0.0.1, as separate
processes talking over TCP exactly as across hospitals: the SuperLink serves TLS with a
certificate from a private CA made here and accepts only SuperNodes whose public keys were
registered; each SuperNode reads its own data folder named in its node config; the app is
submitted with ``flwr run``. The SuperLink runs with
``--disable-runtime-dependency-installation``: by default it would install the app's
``[project].dependencies`` into a fresh environment with uv, which pulls a CUDA torch.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client.node import (
    executor_command,
    node_config_arg,
    supernode_command,
    supernode_entry,
    warm_isolation_args,
)
from mpc.parties import free_port
from scripts._cli import wait_with_companion
from server.coordinator import superlink_command
from server.pki import TlsFiles, existing_tls, make_node_key, make_tls
from server.processes import kill_trees, raise_stopped, stop_trees
from task.constants import REPO_ROOT

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
CONNECTION = "primia-local"


def _toml_str(value: object) -> str:
    """A TOML basic string (Flower parses node and run config values as TOML)."""
    return json.dumps(str(value))


class DeploymentError(RuntimeError):
    """A process of the deployment failed; the message names it and points at its log."""


def given_tls(folder: Path) -> TlsFiles:
    """The SuperLink's TLS files in ``folder``; a missing one stops the deployment (there
    is no fallback to plaintext)."""
    try:
        return existing_tls(folder)
    except FileNotFoundError as err:
        raise DeploymentError(
            f"{err}; refusing to start without TLS (pass --insecure, explicitly, "
            "for a local experiment without it)"
        ) from err


@dataclass
class LocalDeployment:
    """Start, use and stop a SuperLink and SuperNodes under ``workdir``.

    Args:
        workdir: certificates, keys, logs, Flower home and state go here.
        insecure: run without TLS and without SuperNode authentication. Only for local
            experiments; must be asked for explicitly.
        tls_dir: the SuperLink's certificates from the hospitals' own PKI (``ca.pem``,
            ``superlink.pem``, ``superlink.key``); None: a private CA is made in
            ``workdir/pki``. Missing files stop the deployment; there is no fallback to
            plaintext.
        warm: each SuperNode runs its ClientApps through the site's warm executor
            (:mod:`client.executor`); False: Flower's own cold process per message.
        site_threads: CPU threads of each site's ClientApps (``OMP_NUM_THREADS``); None:
            torch's default, every core. All sites share this machine's cores, so
            ``cores // sites`` is what each would have on its own host (as the
            simulation's ``federation.client_cpus``).
    """

    workdir: Path
    insecure: bool = False
    tls_dir: Path | None = None
    warm: bool = True
    site_threads: int | None = None
    port: int = field(default_factory=lambda: free_port(HOST))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.flwr_home = self.workdir / "flwr-home"
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
        }
        if self.insecure:
            log.warning("insecure deployment: no TLS, no SuperNode authentication")
        elif self.tls_dir is not None:
            self.tls = given_tls(Path(self.tls_dir))
        else:
            self.tls = make_tls(self.workdir / "pki", [HOST, "localhost"])
        self._write_connection()

    # -- helpers -------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _write_connection(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = [
            "[superlink]",
            f'default = "{CONNECTION}"',
            "",
            f"[superlink.{CONNECTION}]",
            f'address = "{self.address}"',
        ]
        if self.tls:
            lines.append(f'root-certificates = "{self.tls.ca_cert}"')
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def _spawn(
        self, name: str, args: list[str], cwd: Path | None = None, env: dict | None = None
    ) -> subprocess.Popen:
        path = self.workdir / "logs" / f"{name}.log"
        if path.exists():  # a restart: keep the earlier process's log beside the new one
            earlier = len(list(path.parent.glob(f"{name}.*.log")))
            path.rename(path.with_name(f"{name}.{earlier + 1}.log"))
        logfile = path.open("w")
        proc = subprocess.Popen(
            args,
            cwd=cwd or self.workdir,
            env=env or self.env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def _cli(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self._bin("flwr"), *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # -- lifecycle -----------------------------------------------------------------------
    def start_superlink(self, timeout: float = 60) -> None:
        """The SuperLink, started as the coordinator's command starts it."""
        database = self.workdir / "superlink.db"
        if self.tls:
            args = superlink_command(host=HOST, port=self.port, tls=self.tls, database=database)
        else:
            args = [self._bin("flower-superlink"), "--host", HOST, "--port", str(self.port)]
            args += ["--database", str(database), "--disable-runtime-dependency-installation"]
            args.append("--insecure")
        proc = self._spawn("superlink", args)
        deadline = time.monotonic() + timeout
        while "Application startup complete" not in self.log_tail("superlink", 200):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DeploymentError(f"SuperLink did not start:\n{self.log_tail('superlink')}")
            time.sleep(0.5)

    def new_node_key(self, name: str) -> tuple[Path, Path]:
        return make_node_key(self.workdir / "keys", name)

    def register(self, public_key: Path) -> None:
        """Register a SuperNode's public key with the SuperLink (Control API)."""
        res = self._cli(["supernode", "register", str(public_key), CONNECTION])
        if res.returncode != 0:
            raise DeploymentError(f"registering {public_key} failed:\n{res.stdout}{res.stderr}")

    def start_supernode(
        self,
        name: str,
        node_config: dict[str, str],
        private_key: Path | None,
    ) -> subprocess.Popen:
        """A SuperNode, started as the hospital's command starts it; with :attr:`warm`,
        with ``--isolation process`` and the site's warm executor beside it, the two
        authenticated by a fresh shared secret, and the SuperNode stopped if the executor
        exits first (:func:`scripts._cli.wait_with_companion`, as the hospital's command)
        unless :meth:`kill` or :meth:`stop` took it out of :attr:`procs` first."""
        port = free_port(HOST)
        retries = {"max_retries": 20, "max_wait_time": 60}
        if self.tls and private_key is not None:
            args = supernode_command(
                superlink=self.address,
                ca_cert=self.tls.ca_cert,
                private_key=private_key,
                config=node_config,
                runtime_port=port,
                **retries,
            )
        else:  # --insecure, or TLS without node authentication (refused by the SuperLink)
            args = [*supernode_entry(), "--superlink", self.address]
            args += ["--node-config", node_config_arg(node_config)]
            args += ["--host", HOST, "--port", str(port), "--max-retries", "20"]
            args += ["--max-wait-time", "60"]
            tls = ["--root-certificates", str(self.tls.ca_cert)] if self.tls else ["--insecure"]
            args += tls
        env = dict(self.env)
        if self.site_threads is not None:
            env |= {"OMP_NUM_THREADS": str(self.site_threads)}
        if not self.warm:
            return self._spawn(name, args, env=env)
        secret = self.workdir / "secrets" / f"{name}.superexec"
        node = self._spawn(name, [*args, *warm_isolation_args(secret)], env=env)
        executor = executor_command(port, secret, node.pid)
        beside = self._spawn(f"{name}.executor", executor, REPO_ROOT, env=env)
        watched = (node, beside, lambda: self.procs.get(name) is not node)
        threading.Thread(target=wait_with_companion, args=watched, daemon=True).start()
        return node

    def connected_nodes(self) -> int:
        res = self._cli(["supernode", "list", CONNECTION, "--format", "json"])
        return res.stdout.count('"online"')

    def start_app(self, overrides: Sequence[str], name: str = "flwr-run") -> subprocess.Popen:
        """Submit the app with ``flwr run --stream`` in the background (log: ``<name>.log``)."""
        run_config = f"overrides={_toml_str(shlex.join(overrides))}"
        args = [self._bin("flwr"), "run", str(REPO_ROOT), CONNECTION]
        return self._spawn(name, [*args, "--run-config", run_config, "--stream"], REPO_ROOT)

    def kill(self, name: str) -> None:
        """SIGKILL a process of the deployment with everything it started (a crash: no
        shutdown handlers run), a SuperNode with its warm executor. The SuperLink's
        ServerApp and a SuperNode's ClientApps (its executor's) are their descendants."""
        # Out of procs first: the executor's watcher then leaves the SuperNode to the
        # SIGKILL instead of stopping it cleanly, which a crash would not do.
        kill_trees([self.procs.pop(n) for n in (name, f"{name}.executor") if n in self.procs])

    def run_app(
        self, overrides: Sequence[str], timeout: float = 1800
    ) -> subprocess.CompletedProcess:
        """Submit this repository's app with ``flwr run`` and stream its logs until it ends."""
        run_config = f"overrides={_toml_str(shlex.join(overrides))}"
        res = self._cli(
            ["run", str(REPO_ROOT), CONNECTION, "--run-config", run_config, "--stream"],
            timeout=timeout,
        )
        (self.workdir / "logs" / "flwr-run.log").write_text(res.stdout + res.stderr)
        return res

    def stop(self) -> None:
        """Stop every process this deployment started (SuperNodes first), with everything
        they started (:func:`server.processes.stop_trees`). Out of :attr:`procs` first:
        an executor that ends before its SuperNode is then no fault to its watcher."""
        procs, self.procs = self.procs, {}
        stop_trees([procs[n] for n in sorted(procs, key=lambda n: n == "superlink")])

    def __enter__(self) -> LocalDeployment:
        # SIGTERM or SIGINT (Ctrl-C) to the launcher unwinds through __exit__, which stops
        # everything started; Python's default SIGTERM would leave them all running.
        self._handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._handlers[sig] = signal.signal(sig, raise_stopped)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
