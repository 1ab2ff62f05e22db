"""A site's node config: which device it computes on (its own, else the run's)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from task.federation.node import DEVICE, site_device
from task.runtime.device import DeviceError, resolve_device


def test_a_site_computes_on_its_node_configs_device_else_the_runs() -> None:
    cfg = OmegaConf.create({"device": "auto"})
    assert site_device(cfg, {"site-name": "a"}) == ("auto", "device")
    assert site_device(cfg, {DEVICE: "cuda:1"}) == ("cuda:1", "node config device")


def test_a_bad_node_config_device_is_refused_naming_the_node_config() -> None:
    cfg = OmegaConf.create({"device": "auto"})
    with pytest.raises(DeviceError, match=r"^node config device='tpu' is not one of"):
        resolve_device(*site_device(cfg, {DEVICE: "tpu"}))
