"""Each encrypted-diagnosis party in a spawned process of its own.

Two steps: *prepare* (import CrypTen, load and convert the model; no network) as soon as
the process starts, then *run* when the session is known. A service thus keeps a prepared
model owner waiting, so a request does not pay for interpreter start-up and model
conversion. Any failure, death or timeout of the process is a :class:`PartyError`.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class PartyError(RuntimeError):
    """A party process failed, died or ran past its session timeout."""


def _prepared_main(prepare: Callable, run: Callable, args: tuple, conn: Connection) -> None:
    # Plain pickle, not the Pipe's: torch would send tensors as shared-memory handles,
    # which die with this process before the parent reads them.
    try:
        state = prepare(*args)
        conn.send_bytes(pickle.dumps(("ready", None)))
        session = conn.recv()
        conn.send_bytes(pickle.dumps(("ok", run(state, session))))
    except BaseException:  # report any failure to the parent, which decides what to do
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
    finally:
        conn.close()


class PreparedParty:
    """A party in its own spawned process: prepared at once, run on :meth:`start`."""

    def __init__(self, name: str, prepare: Callable, run: Callable, args: tuple = ()) -> None:
        ctx = mp.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_prepared_main, args=(prepare, run, args, child), name=name, daemon=True
        )
        self.process.start()
        child.close()
        self._ready = False

    def wait_ready(self, timeout: float) -> None:
        """Block until preparation is done; raise :class:`PartyError` if it failed."""
        if self._ready:
            return
        status, value = self._receive(timeout, "prepare")
        if status != "ready":
            raise PartyError(f"{self.name} failed to prepare:\n{value}")
        self._ready = True

    def start(self, session: Any, timeout: float = 120.0) -> None:
        self.wait_ready(timeout)
        self._conn.send(session)

    def result(self, timeout: float) -> Any:
        """The party's return value; :class:`PartyError` on failure, death or timeout."""
        status, value = self._receive(timeout, "session")
        if status != "ok":
            raise PartyError(f"{self.name} failed:\n{value}")
        self.process.join(timeout=10)
        return value

    def _receive(self, timeout: float, stage: str) -> tuple[str, Any]:
        try:
            if not self._conn.poll(timeout):
                self.kill()
                raise PartyError(f"{self.name} did not finish its {stage} within {timeout:.0f} s")
            return pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError) as err:
            self.kill()
            raise PartyError(
                f"{self.name} died during its {stage} (exit code {self.process.exitcode})"
            ) from err

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self._conn.close()


def run_parties(
    parties: list[PreparedParty], session: Any, *, start_timeout: float, result_timeout: float
) -> list[Any]:
    """Start every prepared party on ``session``; their results, in order. Every party's
    process is ended, whatever happens."""
    try:
        for party in parties:
            party.start(session, timeout=start_timeout)
        return [party.result(result_timeout) for party in parties]
    finally:
        for party in parties:
            party.kill()
