"""Where a deployed round's time goes: per stage, per process, per function.

Read from what a deployment leaves in its workdir (``scripts.deploy_local``):
- **per stage**, from each SuperNode's timestamped log (``Receiving``, ``Received
  successfully``, ``Sending``) matched in order with the site's audit log, which names each
  reply's secure-aggregation stage: the seconds the SuperNode took to fetch the message,
  the seconds the message's process took, and the seconds until the next message came
  (the other sites, the coordinator and the polls);
- **per process**, from CPU seconds sampled in ``/proc`` while the deployment ran
  (:class:`CpuSampler`), grouped by role;
- **per function**, from the cProfile each message's process wrote
  (``client.executor.PROFILE_DIR``): the median seconds of the named steps per kind.
"""

from __future__ import annotations

import json
import os
import pstats
import re
import statistics
import threading
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from server.processes import descendants, process_table

#: A SuperNode log line with its timestamp (``client.supernode`` turns them on).
_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}).*?(Receiving|Received|Sending)")
#: Named steps of a message's process: (label, file suffix, function).
STEPS = (
    ("whole process", "runtime/run_clientapp.py", "run_clientapp"),
    ("fetch message from SuperNode", "runtime/run_clientapp.py", "pull_task_input"),
    ("unpack and check FAB", "cli/install.py", "install_from_fab"),
    ("ClientApp (mods and handler)", "clientapp/client_app.py", "__call__"),
    ("run config", "client/run_config.py", "composed"),
    ("site data (cache)", "task/data/sites.py", "load_site"),
    ("local training", "task/federation/local_round.py", "local_train"),
    ("local validation", "task/federation/local_round.py", "local_evaluate"),
    ("send reply to SuperNode", "runtime/run_clientapp.py", "push_message"),
)
ROLES = (
    ("superlink", "flower-superlink"),
    ("serverapp", "flwr-serverapp"),
    ("supernodes", "client.supernode"),
    ("message processes and warm executors", "client.executor"),
    ("launcher and flwr run", ""),
)


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _stage(entry: dict) -> str:
    secagg = entry.get("secagg") or {}
    kind = str(entry.get("message_type", "?")).split(".")[0]
    return f"{secagg.get('kind') or kind} {secagg.get('stage', 'mask')}" if secagg else kind


def stages(workdir: Path) -> dict[str, dict[str, float]]:
    """Median seconds per stage (``train advertise``, ``train mask``, ...) of fetching,
    processing and waiting for the next message, over every site's messages."""
    spans: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for log_path in sorted((workdir / "logs").glob("site-*.log")):
        if log_path.name.endswith(".executor.log"):
            continue
        events = [
            (m[2], _stamp(m[1])) for m in _LINE.finditer(log_path.read_text("utf-8", "replace"))
        ]
        receiving = [t for kind, t in events if kind == "Receiving"]
        received = [t for kind, t in events if kind == "Received"]
        sending = [t for kind, t in events if kind == "Sending"]
        site_log = workdir / "state" / log_path.stem / "site-log.jsonl"
        entries = [json.loads(line) for line in site_log.read_text().splitlines()[1:]]
        for i, entry in enumerate(entries[: min(len(received), len(sending))]):
            stage = spans[_stage(entry)]
            stage["fetch"].append(received[i] - receiving[i])
            stage["process"].append(sending[i] - received[i])
            if i + 1 < len(receiving):
                stage["until next message"].append(receiving[i + 1] - sending[i])
    return {
        name: {part: round(statistics.median(v), 3) for part, v in parts.items() if v}
        | {"messages": len(parts["process"])}
        for name, parts in spans.items()
    }


def _kind(stats: pstats.Stats) -> str:
    for file, _, function in stats.stats:
        if file.endswith("client/local.py") and function in ("train", "evaluate"):
            return function
    return "key stage"


def functions(profile_dir: Path, steps: tuple = STEPS) -> dict[str, dict[str, float]]:
    """Median cumulative seconds of each named step (:data:`STEPS`) per message kind."""
    seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(profile_dir.glob("*.prof")):
        stats = pstats.Stats(str(path))
        found = seconds[_kind(stats)]
        for (file, _, function), row in stats.stats.items():
            for label, suffix, name in steps:
                if function == name and file.endswith(suffix):
                    found[label].append(row[3])  # cumulative time
    return {
        kind: {label: round(statistics.median(v), 3) for label, v in timed.items()}
        | {"processes": max(len(v) for v in timed.values())}
        for kind, timed in seconds.items()
    }


class CpuSampler:
    """CPU seconds of every process below ``pid``, sampled each ``interval`` seconds from
    ``/proc`` until :meth:`stop`; :meth:`by_role` sums them per :data:`ROLES`."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval = pid, interval
        self._seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def _sample(self, pid: int, fields: list[str]) -> None:
        if pid in self._seen:  # its command line was read when it was first seen
            cmd = self._seen[pid][0]
        else:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:  # it ended while we looked
                return
        self._seen[pid] = (cmd, (int(fields[11]) + int(fields[12])) / self._tick)

    def _run(self) -> None:
        while not self._stop.is_set():
            table = process_table()
            for pid in [self.pid, *descendants(self.pid, table)]:
                if pid in table:
                    self._sample(pid, table[pid])
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict[str, float]:
        """CPU seconds per role (a process's last sample: one that lived under
        ``interval`` seconds may be missed)."""
        totals = dict.fromkeys((role for role, _ in ROLES), 0.0)
        for cmd, cpu in self._seen.values():
            role = next(role for role, marker in ROLES if marker in cmd)
            totals[role] += cpu
        return {role: round(cpu, 1) for role, cpu in totals.items()}
