"""The federation without Flower: the simulation's parallelism, the same arithmetic."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from task.config import compose_config
from task.federation.reference import fedavg_reference, parallelism
from task.models.factory import build_model

TINY = [
    "logger=none",
    "secure=none",
    "data.limit=120",
    "federation.num_rounds=2",
    "train.batch_size=32",
    "train.precision=fp32",
    "model=small_cnn",
    "model.channels=[4,8,8,8]",
]


@pytest.mark.parametrize(
    ("client_cpus", "cpus", "expected"),
    [(1, 2, (2, 1)), (2, 2, (1, 2)), (4, 2, (1, 2)), (2, 16, (8, 2))],
)
def test_sites_at_a_time_as_flower_runs_them(client_cpus, cpus, expected) -> None:
    cfg = compose_config([*TINY, f"federation.client_cpus={client_cpus}"])
    assert parallelism(cfg, cpus) == expected


@pytest.mark.slow
def test_worker_processes_compute_what_one_process_does() -> None:
    cfg = compose_config([*TINY, "federation.client_cpus=1"])
    one = fedavg_reference(cfg, workers=1)
    two = fedavg_reference(cfg, workers=2)
    assert (one["workers"], two["workers"], two["threads"]) == (1, 2, 1)
    assert [h["round"] for h in two["history"]] == [1, 2]
    # One thread against all threads: the same steps up to float summation order. Compared
    # by outputs: conv biases before a norm layer get no true gradient, so Adam turns
    # round-off into steps that the norm cancels (as in tests/scripts/test_train.py).
    data = instantiate(cfg.data).load(instantiate(cfg.transforms.preprocess))
    images = torch.from_numpy(data.test.images[:100])
    for key in ("state", "validated_state"):
        logits = []
        for run in (one, two):
            model = build_model(cfg.model, data.in_shape, 2)
            model.load_state_dict(run[key])
            model.eval()
            with torch.no_grad():
                logits.append(model(images))
        torch.testing.assert_close(logits[0], logits[1], atol=5e-3, rtol=1e-3)
    assert one["history"][-1]["num-examples"] == two["history"][-1]["num-examples"] > 0


def test_a_bad_worker_count_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="workers=0 must be at least 1"):
        fedavg_reference(compose_config(TINY), workers=0)
