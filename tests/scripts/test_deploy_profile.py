"""Where a deployed round's time goes: the stage table from a SuperNode's timestamped log and
the site's audit log, the per-step table from profiles, CPU per role from /proc."""

from __future__ import annotations

import cProfile
import json
import subprocess
import sys

import pytest

from scripts import deploy_profile


def _site(workdir, lines, entries):
    (workdir / "logs").mkdir(parents=True)
    (workdir / "logs" / "site-0.log").write_text("\n".join(lines))
    (workdir / "logs" / "site-0.executor.log").write_text("Receiving nonsense\n")
    state = workdir / "state" / "site-0"
    state.mkdir(parents=True)
    rows = [{"kind": "genesis"}, *entries]
    (state / "site-log.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def _line(stamp: str, event: str) -> str:
    return f"\x1b[92mINFO 2026-12-05 18:04:{stamp}\x1b[0m:      {event}: query.secagg message"


def test_stages_pair_the_supernode_log_with_the_stages_the_site_log_names(tmp_path):
    lines = [
        _line("00,000", "Receiving"),
        _line("00,100", "Received successfully").replace(": query.secagg message", ""),
        _line("00,600", "Sending"),
        _line("01,600", "Receiving"),
        _line("01,800", "Received successfully").replace(": query.secagg message", ""),
        _line("04,800", "Sending"),
    ]
    entries = [
        {"message_type": "query.secagg", "secagg": {"kind": "train", "stage": "advertise"}},
        {"message_type": "train", "secagg": {"kind": "train", "stage": "mask"}},
    ]
    _site(tmp_path, lines, entries)
    got = deploy_profile.stages(tmp_path)
    assert got["train advertise"] == pytest.approx(
        {"fetch": 0.1, "process": 0.5, "until next message": 1.0, "messages": 1}
    )
    assert got["train mask"] == pytest.approx({"fetch": 0.2, "process": 3.0, "messages": 1})


def test_functions_name_each_step_of_a_profiled_process(tmp_path):
    profiler = cProfile.Profile()
    profiler.enable()
    json.dumps(list(range(1000)))
    profiler.disable()
    profiler.dump_stats(tmp_path / "1.prof")
    steps = (("encode", "json/__init__.py", "dumps"),)
    got = deploy_profile.functions(tmp_path, steps)
    assert set(got) == {"key stage"} and got["key stage"]["processes"] == 1
    assert got["key stage"]["encode"] >= 0


def test_cpu_seconds_are_summed_per_role_including_processes_that_ended():
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
    script = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"
    proc = subprocess.Popen([sys.executable, "-c", script, "client.executor"])
    sampler = deploy_profile.CpuSampler(proc.pid, interval=0.05).start()
    proc.wait()
    sampler.stop()
    roles = sampler.by_role()
    assert set(roles) == {role for role, _ in deploy_profile.ROLES}
    assert roles["launcher and flwr run"] >= 0.4  # the busy child, sampled before it ended
