"""Identities for the sites a simulation or a local deployment launches itself."""

from __future__ import annotations

import json

from server.identities import provision_identities
from task.config import compose_config


def test_secure_run_without_roster_gets_one_identity_per_site(tmp_path):
    roster = provision_identities(compose_config(["secure=smpc"]), tmp_path, ["a", "b"])
    assert roster == tmp_path / "roster.json"
    assert set(json.loads(roster.read_text())) == {"a", "b"}
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600


def test_nothing_is_made_without_secure_aggregation_or_with_a_roster(tmp_path):
    assert provision_identities(compose_config(["secure=none"]), tmp_path, ["a"]) is None
    given = compose_config(["secure=smpc", f"secure.roster={tmp_path / 'mine.json'}"])
    assert provision_identities(given, tmp_path, ["a"]) is None
    assert not any(tmp_path.iterdir())
