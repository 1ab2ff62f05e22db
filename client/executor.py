"""A hospital's warm ClientApp executor: ``python -m client.executor``.

Flower's SuperNode runs each message in a fresh ``flwr-clientapp`` process, which imports
torch, MONAI and the app again: seconds per message, several messages per site per secure
round. Started with ``--isolation process``, the SuperNode leaves launching those processes
to an executor beside it. This one runs Flower's own SuperExec loop (task polling over the
SuperNode's Runtime API with its HMAC authentication, signal handling, parent monitoring)
with one change: a ClientApp task's process is forked from this process, which has imported
the libraries and the app once, instead of started cold. The fork then runs Flower's own
``run_clientapp`` for that task's token and exits. A task asks for its message's objects
at the SuperNode while they may still be arriving; its back-off is shortened
(:func:`client.pacing.pace_object_pulls`).

Isolation stays Flower's: every message runs in its own process, which ends when its reply
is sent. A child starts from this parent's memory, which holds imported code only: the
parent never pulls a message, a context, a key or an image (it only sees task tokens), and
nothing a child does reaches the parent or a later child. The parent exits with its
SuperNode (``--parent-pid``) and each child with the parent (Flower's parent monitor).

What it changes: the child runs the ClientApp module this site installed (imported here
before any run), where a cold process would import the copy in the coordinator's FAB when
the FAB names the same module. In this project both are the same package; a site that
updates its installation restarts its executor.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, SubprocessExecutor
from flwr.supercore.tls import validate_and_resolve_root_certificates

from client.pacing import pace_object_pulls

log = logging.getLogger(__name__)

#: Imported before the first task: the app and what its train and evaluate handlers import
#: lazily (:mod:`client.local` brings torch, MONAI and the site loops, and its
#: ``warm_up`` what they would otherwise import on first use).
WARM = ("client.client_app", "client.local")
#: Seconds between the executor's looks for a new task (Flower's default: 1).
TASK_POLL_INTERVAL = 0.1
#: Environment variable naming a folder: each task's process writes a cProfile of its
#: whole run there (``<end time>-<pid>.prof``), for ``scripts.bench_federated``.
PROFILE_DIR = "PRIMIA_PROFILE_DIR"


class ForkingExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that a ClientApp task is forked warm."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the parent's loop
            _run_task(spec)
        return LaunchResult.accepted()


def _run_task(spec: ExecutionSpec) -> None:
    """Run one ClientApp task with Flower's own runner, then leave the process without
    running anything the parent registered (its loop, its exit handlers)."""
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    code = 1
    profile_dir = os.environ.get(PROFILE_DIR)
    profiler = cProfile.Profile() if profile_dir else None
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        certificates = validate_and_resolve_root_certificates(
            spec.root_certificates_path, spec.insecure
        )
        if profiler is not None:
            profiler.enable()
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=certificates,
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as done:  # Flower's runner ends with sys.exit(code)
        code = done.code if isinstance(done.code, int) else 1
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(Path(profile_dir) / f"{time.time():.3f}-{os.getpid()}.prof")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def warm_up(modules: tuple[str, ...] = WARM) -> float:
    """Import ``modules`` and run the ``warm_up()`` of those that have one; returns the
    seconds it took."""
    t0 = time.perf_counter()
    for name in modules:
        module = importlib.import_module(name)
        if callable(getattr(module, "warm_up", None)):
            module.warm_up()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--root-certificates", default=None)
    parser.add_argument("--superexec-auth-secret-file", default=None)
    parser.add_argument("--parent-pid", type=int, default=None, help="the SuperNode's pid")
    args = parser.parse_args(argv)
    try:
        secret = load_superexec_auth_secret(args.superexec_auth_secret_file)
    except ValueError as err:
        parser.error(str(err))
    print(f"warm executor: imported the app in {warm_up():.1f} s", flush=True)
    pace_object_pulls()  # a task's message objects are often still on their way
    # Flower's loop looks for a task once a second by default; a look is one request to
    # the SuperNode on this host.
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(TASK_POLL_INTERVAL))
    # The kernel reaps the forked tasks; nothing here waits on them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    # Flower's loop builds its executor through this module-level name; ours replaces it
    # in this process only.
    superexec.get_executor = lambda *_, **__: ForkingExecutor()
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        superexec_auth_secret=secret,
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
