"""The warm executor: one forked process per message, nothing carried between messages,
and gone with its SuperNode. End to end it runs every deployed test's ClientApps
(tests/scripts/test_deploy_local.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import ExecutionSpec

import client.executor as executor
from mpc.parties import free_port
from task.constants import REPO_ROOT

#: What a task may change in its process: the test checks that no later task sees it.
STATE: dict[str, int] = {"tasks_seen": 0}


def _spec(token: str, task_type: TaskType = TaskType.CLIENT_APP) -> ExecutionSpec:
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:1",
        token=token,
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=os.getpid(),
        suppress_output=False,
        task_id=1,
    )


def test_each_task_runs_in_its_own_fork_and_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    out = tmp_path / "tasks.jsonl"

    def fake_run_clientapp(*, token, **_):  # stands in for Flower's runner in the child
        STATE["tasks_seen"] += 1
        with out.open("a") as fh:
            fh.write(json.dumps({"token": token, "pid": os.getpid(), **STATE}) + "\n")
        raise SystemExit(3)  # Flower's runner ends with sys.exit(code)

    import flwr.supernode.runtime.run_clientapp as runner

    monkeypatch.setattr(runner, "run_clientapp", fake_run_clientapp)
    launcher = executor.ForkingExecutor()
    for token in ("a", "b"):
        assert launcher.launch(_spec(token)).status == "accepted"
    deadline = time.monotonic() + 30
    while len(out.read_text().splitlines() if out.exists() else []) < 2:
        assert time.monotonic() < deadline, "the forked tasks did not run"
        time.sleep(0.05)
    tasks = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(t["token"] for t in tasks) == ["a", "b"]
    assert {t["pid"] for t in tasks}.isdisjoint({os.getpid()}) and tasks[0]["pid"] != tasks[1][
        "pid"
    ]
    # Each task started from the parent's state, not from the task before it ...
    assert [t["tasks_seen"] for t in tasks] == [1, 1]
    # ... and the parent (which only launches) never ran one: the children left by
    # os._exit, not by unwinding into this test.
    assert STATE["tasks_seen"] == 0


def test_the_executor_exits_when_its_supernode_dies() -> None:
    supernode = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    address = f"127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens: it only polls
    args = ["--insecure", "--runtime-api-address", address, "--parent-pid", str(supernode.pid)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.executor", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "warm executor: imported the app" in proc.stdout.readline()
        time.sleep(1)
        assert proc.poll() is None  # running while its SuperNode lives
        supernode.kill()
        supernode.wait()
        proc.wait(timeout=30)  # Flower's parent monitor: within a second or so
    finally:
        supernode.kill()
        proc.kill()


def test_a_missing_auth_secret_file_is_refused_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "absent.secret"
    with pytest.raises(SystemExit) as exit_info:
        executor.main(
            ["--runtime-api-address", "127.0.0.1:1", "--superexec-auth-secret-file", str(missing)]
        )
    assert exit_info.value.code == 2
