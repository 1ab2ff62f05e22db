"""Key fingerprints that hospitals and the coordinator compare out of band."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from mpc.secagg.identity import write_identities
from scripts.fingerprint import main


def test_a_site_key_and_its_roster_entry_print_the_same_fingerprint(tmp_path, capsys):
    roster = write_identities(tmp_path, ["site-a", "site-b"])
    assert main([str(roster)]) == 0
    listed = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert main([str(tmp_path / "site-a.key")]) == 0
    own = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert own["site-a"] == listed["site-a"] != listed["site-b"]
    assert own["site-a"].startswith("SHA256:")


def test_a_substituted_roster_key_shows_another_fingerprint(tmp_path, capsys):
    roster = write_identities(tmp_path / "real", ["site-a"])
    forged = write_identities(tmp_path / "forged", ["site-a"])
    main([str(roster)])
    real = capsys.readouterr().out
    main([str(forged)])
    assert capsys.readouterr().out != real


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_fingerprints_agree_with_ssh_keygen(tmp_path, capsys):
    roster = write_identities(tmp_path, ["site-a"])
    pub = tmp_path / "site-a.pub"
    pub.write_text(json.loads(roster.read_text())["site-a"] + "\n")
    main([str(pub)])
    ours = capsys.readouterr().out.split("\t")[1].strip()
    theirs = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert ours == theirs


def test_a_file_that_is_no_key_is_refused_by_name(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    assert main([str(bad)]) == 2
    assert f"error: {bad}:" in capsys.readouterr().err
