"""A deployed site composes the run's config once, until an override or a config file changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from omegaconf import OmegaConf

from client import run_config
from task.constants import REPO_ROOT

OVERRIDES = ("federation.num_rounds=2", "secure=none")


def _context(node_config: dict) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config=node_config,
        state=RecordDict(),
        run_config={"overrides": " ".join(OVERRIDES)},
    )


@pytest.fixture(autouse=True)
def _fresh_process_cache():
    run_config.composed.cache_clear()
    yield
    run_config.composed.cache_clear()


def test_a_deployed_site_reads_the_config_it_composed_before(tmp_path, monkeypatch):
    context = _context({"state-dir": str(tmp_path)})
    first = run_config.run_config(context, None)
    files = list((tmp_path / run_config.CONFIG_CACHE).glob("*.json"))
    assert len(files) == 1
    run_config.composed.cache_clear()  # a new message: a new process

    def no_hydra(_):
        raise AssertionError("composed again")

    monkeypatch.setattr(run_config, "compose_config", no_hydra)
    again = run_config.run_config(context, None)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(first)
    assert again.federation.num_rounds == 2
    with pytest.raises(AttributeError):  # struct, as Hydra's: a misspelt key fails
        _ = again.federation.num_round


def test_the_key_changes_with_an_override_or_a_config_file(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO_ROOT / "conf", conf)
    key = run_config.config_key(OVERRIDES, conf)
    assert run_config.config_key(OVERRIDES[:1], conf) != key
    (conf / "train.yaml").write_text((conf / "train.yaml").read_text() + "\n# edited\n")
    assert run_config.config_key(OVERRIDES, conf) != key


def test_an_unreadable_cached_config_is_composed_anew(tmp_path):
    context = _context({"state-dir": str(tmp_path)})
    run_config.run_config(context, None)
    (cached,) = (tmp_path / run_config.CONFIG_CACHE).glob("*.json")
    cached.write_text("{not: [yaml")
    run_config.composed.cache_clear()
    cfg = run_config.run_config(context, None)
    assert cfg.federation.num_rounds == 2
    assert json.loads(cached.read_text())["federation"]["num_rounds"] == 2  # rewritten


def test_simulated_sites_and_given_overrides_write_nothing(tmp_path):
    run_config.run_config(_context({"partition-id": 0, "num-partitions": 3}), None)
    run_config.run_config(_context({"state-dir": str(tmp_path)}), list(OVERRIDES))
    assert not (tmp_path / run_config.CONFIG_CACHE).exists()
    assert not Path(run_config.CONFIG_CACHE).exists()
