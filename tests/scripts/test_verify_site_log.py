"""``python -m scripts.verify_site_log`` as a real process on real logs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from client.site_log import LOG_FILE, SiteLog, entry_hash
from tests.processes import run_python


def _log(folder: Path, site: str, rounds: int = 3) -> Path:
    log = SiteLog(folder / LOG_FILE, site)
    for r in range(1, rounds + 1):
        for kind in ("train", "evaluate"):
            fields = {"kind": "reply", "run_id": 7, "round": r, "message_type": kind}
            log.append(fields | {"epsilon": 0.25 * r if kind == "train" else None})
    return log.path


def _verify(*args: Path | str) -> subprocess.CompletedProcess:
    return run_python("-m", "scripts.verify_site_log", *map(str, args))


def test_good_logs_print_their_head_hash_and_exit_0(tmp_path: Path) -> None:
    a = _log(tmp_path / "sites" / "site-0", "site-0")
    b = _log(tmp_path / "sites" / "site-1", "site-1", rounds=2)
    proc = _verify(tmp_path / "sites")  # a folder: every site-log.jsonl under it
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 2
    for line, path, rounds in zip(out, (a, b), ("1-3", "1-2"), strict=True):
        head = json.loads(path.read_bytes().splitlines()[-1])["hash"]
        assert line.startswith(f"{path}:") and line.endswith(f"head {head}  OK")
        assert f"rounds {rounds}" in line and "runs 7" in line
    assert "last ε 0.75" in out[0] and f"{2 * 2 + 1} entries" in out[1]


def test_a_tampered_log_names_its_line_and_exits_1(tmp_path: Path) -> None:
    good = _log(tmp_path / "good", "site-0")
    bad = _log(tmp_path / "bad", "site-1")
    lines = bad.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[2])
    entry["epsilon"] = 0.0  # a site hiding what it spent
    entry["hash"] = entry_hash(entry)
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    bad.write_bytes(b"".join(lines))
    proc = _verify(good, bad)
    assert proc.returncode == 1
    assert f"{good}:" in proc.stdout and "OK" in proc.stdout
    assert f"FAILED {bad}, line 4: broken link" in proc.stderr


def test_a_missing_log_exits_1(tmp_path: Path) -> None:
    proc = _verify(tmp_path / "nowhere" / LOG_FILE)
    assert proc.returncode == 1 and "No such file" in proc.stderr


def test_anchor_catches_a_log_cut_at_its_end(tmp_path: Path) -> None:
    path = _log(tmp_path, "site-0")
    head = json.loads(path.read_bytes().splitlines()[-1])["hash"]
    assert _verify(path, "--anchor", head).returncode == 0
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    proc = _verify(path, "--anchor", head)
    assert proc.returncode == 1 and f"anchored hash {head} is not in the log" in proc.stderr
