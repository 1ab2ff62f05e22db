"""The simulation prints each Flower log line once where Hydra has set up the root logger."""

from __future__ import annotations

import io
import logging

import pytest

from scripts.simulation import flower_logs_once


@pytest.fixture
def loggers():
    root, flower = logging.getLogger(), logging.getLogger("flwr-test")
    saved = (list(root.handlers), list(flower.handlers), flower.propagate)
    yield root, flower
    root.handlers[:], flower.handlers[:] = saved[0], saved[1]
    flower.propagate = saved[2]


def test_a_flower_line_reaches_the_console_once(loggers):
    root, flower = loggers
    console = io.StringIO()
    root.handlers[:] = [logging.StreamHandler(console)]  # Hydra's console handler
    flower.handlers[:] = [logging.StreamHandler(console)]  # Flower's own
    flower.propagate, flower.level = True, logging.INFO
    flower_logs_once("flwr-test")
    flower.info("configure_train: Sampled 3 nodes")
    assert console.getvalue().count("Sampled 3 nodes") == 1


def test_without_root_handlers_flowers_own_handler_stays(loggers):
    root, flower = loggers
    root.handlers[:] = []
    own = logging.StreamHandler(io.StringIO())
    flower.handlers[:] = [own]
    flower_logs_once("flwr-test")
    assert flower.handlers == [own]


def _fake_gpus(monkeypatch, count: int) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_simulated_sites_ask_ray_for_a_gpu_share_only_on_a_cuda_device(monkeypatch) -> None:
    """Ray hides the GPU from a worker that asks for none: on a CUDA device each site must
    ask for a share, or the sites would train on the CPU whatever ``device`` says."""
    from scripts.simulation import site_gpus
    from task.config import compose_config

    tiny = ["experiment=fed_quick", "logger=none"]
    _fake_gpus(monkeypatch, 0)
    assert site_gpus(compose_config(tiny)) == (0, 0.0)  # device=auto on a CPU machine
    _fake_gpus(monkeypatch, 2)
    assert site_gpus(compose_config([*tiny, "device=cpu"])) == (0, 0.0)
    assert site_gpus(compose_config(tiny)) == (2, pytest.approx(1 / 3))
    assert site_gpus(compose_config([*tiny, "federation.client_gpus=0.5"])) == (2, 0.5)
    for bad in ("0", "1.5", "half"):
        with pytest.raises(ValueError, match=r"federation.client_gpus=.* must be 'auto' or in"):
            site_gpus(compose_config([*tiny, f"federation.client_gpus={bad}"]))
