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
