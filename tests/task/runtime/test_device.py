"""The ``device`` setting: resolution, CUDA's precision and layout, and a CPU path that
computes exactly what the plain PyTorch loop computes.

The ``gpu``-marked tests need a CUDA GPU and skip without one (``tests/conftest.py``); run
them with ``.venv/bin/python -m pytest -m gpu`` (docs/gpu.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from task.privacy import Accountant
from task.privacy.dpsgd import train_private
from task.runtime import checkpoint
from task.runtime.device import (
    DeviceError,
    autocast,
    grad_scaler,
    model_device,
    prepare_model,
    resolve_device,
)
from task.training.engine import predict, train_epoch

#: Largest relative L2 difference between the weight updates of the same seeded training on
#: CUDA and on the CPU: float32 on CUDA (cuDNN may use TF32 in convolutions, 10-bit
#: mantissa), and under bf16 autocast (8-bit mantissa in the forward pass). Not yet measured
#: on a GPU: set from the formats' rounding, loose enough for a few SGD steps.
CUDA_FP32_RTOL = 1e-2
CUDA_AUTOCAST_RTOL = 5e-2

CPU = torch.device("cpu")


def test_cpu_and_auto_resolve_to_the_cpu_without_a_gpu(monkeypatch) -> None:
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    # auto takes CUDA where torch sees one (not touched here: only resolved)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "", "cuda:0,1"])
def test_a_malformed_device_is_refused_by_value(spec: str) -> None:
    with pytest.raises(DeviceError, match=f"^device={spec!r} is not one of auto, cpu, cuda"):
        resolve_device(spec)


def test_cuda_is_refused_by_value_where_there_is_none(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"^device='cuda': no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match=r"^node config device='cuda:1': no CUDA GPU"):
        resolve_device("cuda:1", "node config device")


def test_a_cuda_index_past_the_device_count_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"^device='cuda:2': this machine has 2 CUDA"):
        resolve_device("cuda:2")


def test_on_the_cpu_autocast_is_null_unless_bf16_is_asked_and_the_scaler_is_off() -> None:
    assert isinstance(autocast(CPU), contextlib.nullcontext)
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, cpu_bf16=True):  # train.precision=bf16, as the engine did before
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    assert isinstance(autocast(CPU, cpu_bf16=True, enabled=False), contextlib.nullcontext)
    assert not grad_scaler(CPU).is_enabled()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 12, 12, generator=gen), torch.arange(8) % 2) for _ in range(3)]


def _plain_loop(model: nn.Module, lr: float = 0.1) -> dict[str, torch.Tensor]:
    """Three SGD steps written out in plain PyTorch, in float32: the reference."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([0.75, 1.5]))
    model.train()
    for images, labels in _batches():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images).float(), labels).backward()
        optimizer.step()
    return model.state_dict()


def _engine(model: nn.Module, lr: float = 0.1, **kwargs) -> dict[str, torch.Tensor]:
    """The same three steps through the engine, on whatever device the model is on."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor([0.75, 1.5]))
    stats = train_epoch(model, _batches(), optimizer, loss_fn, **kwargs)
    assert stats["steps"] == 3 and stats["num_examples"] == 24
    return model.state_dict()


def test_the_cpu_path_trains_exactly_the_weights_of_the_plain_float32_loop() -> None:
    reference = _plain_loop(_model())
    model = prepare_model(_model(), resolve_device("cpu"))
    trained = _engine(model)
    assert model_device(model) == CPU
    assert model[0].weight.is_contiguous()  # no channels-last on the CPU
    for key, value in reference.items():
        assert trained[key].dtype == value.dtype
        assert torch.equal(trained[key], value), key  # bit for bit
    # The control: the comparison sees 16-bit rounding, so a CPU path that slipped into
    # autocast would fail the test above.
    rounded = _engine(_model(), bf16=True)
    assert not torch.equal(rounded["0.weight"], reference["0.weight"])


def test_predict_returns_cpu_numpy() -> None:
    probs, labels = predict(_model(), _batches())
    assert isinstance(probs, np.ndarray) and probs.shape == (24, 2) and probs.dtype == np.float32
    assert labels.tolist() == [0, 1] * 12


def test_a_checkpoint_keeps_cpu_tensors_as_they_are(tmp_path: Path) -> None:
    state = _model().state_dict()
    assert checkpoint.on_cpu(state)["0.weight"] is state["0.weight"]
    assert checkpoint.on_cpu(state)._metadata == state._metadata  # load_state_dict reads it
    loaded = checkpoint.load(checkpoint.save_atomic({"model": state}, tmp_path / "c.pt"))
    assert all(torch.equal(loaded["model"][k], v) for k, v in state.items())


# --- on a CUDA GPU (skipped without one) -------------------------------------------------


def _relative_update_error(
    got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> float:
    """``|Δ_got - Δ_want| / |Δ_want|`` over every float parameter, Δ = trained - start."""
    num = den = 0.0
    for key, initial in start.items():
        if not initial.is_floating_point():
            continue
        d_want = want[key].double() - initial.double()
        d_got = got[key].cpu().double() - initial.double()
        num += float((d_got - d_want).pow(2).sum())
        den += float(d_want.pow(2).sum())
    return (num / den) ** 0.5


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("mixed_precision", "rtol"), [(False, CUDA_FP32_RTOL), (True, CUDA_AUTOCAST_RTOL)]
)
def test_cuda_training_agrees_with_the_cpu(mixed_precision: bool, rtol: float) -> None:
    cuda = resolve_device("cuda")
    start = {k: v.clone() for k, v in _model().state_dict().items()}
    on_cpu = _engine(_model())
    model = prepare_model(_model(), cuda)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    on_cuda = _engine(model, mixed_precision=mixed_precision)
    assert all(v.device.type == "cuda" and v.dtype == on_cpu[k].dtype for k, v in on_cuda.items())
    assert _relative_update_error(on_cuda, on_cpu, start) <= rtol
    probs, _ = predict(model, _batches())
    assert isinstance(probs, np.ndarray)


@pytest.mark.gpu
def test_a_checkpoint_saved_on_cuda_loads_on_the_cpu(tmp_path: Path) -> None:
    model = prepare_model(_model(), resolve_device("cuda"))
    _engine(model)
    path = checkpoint.save_atomic({"model": model.state_dict()}, tmp_path / "c.pt")
    state = checkpoint.load(path)
    assert all(v.device == CPU for v in state["model"].values())
    fresh = _model()
    fresh.load_state_dict(state["model"])
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value.cpu()), key


@pytest.mark.gpu
def test_dp_sgd_runs_on_cuda_in_float32() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU(), nn.Linear(8, 2))
    prepare_model(model, resolve_device("cuda"))
    data = torch.utils.data.TensorDataset(
        torch.randn(64, 1, 12, 12), torch.arange(64) % 2
    )  # Opacus samples from the dataset on the CPU; the engine moves each batch
    stats = train_private(
        model,
        torch.utils.data.DataLoader(data, batch_size=16),
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        steps=3,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        accountant=Accountant(),
    )
    assert stats["steps"] == 3
    assert all(p.device.type == "cuda" and torch.isfinite(p).all() for p in model.parameters())


def test_loader_options_start_no_workers_on_the_cpu_and_pin_on_cuda(monkeypatch) -> None:
    from task.runtime.device import MAX_AUTO_WORKERS, loader_options

    assert loader_options(CPU) == {
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
    }
    assert loader_options(CPU, 2) == {
        "num_workers": 2,
        "pin_memory": False,
        "persistent_workers": True,
    }
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    gpu = loader_options(torch.device("cuda"))  # a device object needs no GPU
    assert gpu == {"num_workers": MAX_AUTO_WORKERS, "pin_memory": True, "persistent_workers": True}
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert loader_options(torch.device("cuda:0"))["num_workers"] == 1  # one core kept
    for bad in ("two", -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"num_workers={bad!r} must be 'auto'"):
            loader_options(CPU, bad)


def test_worker_processes_deliver_the_batches_of_the_single_process_loader() -> None:
    from task.data.splits import Split

    rng = np.random.default_rng(0)
    split = Split(rng.random((37, 1, 8, 8), dtype=np.float32), rng.integers(0, 2, 37))
    plain = list(split.loader(8, shuffle=False))
    workers = list(split.loader(8, shuffle=False, num_workers=2, persistent_workers=True))
    assert len(plain) == len(workers) == 5
    for (xa, ya), (xb, yb) in zip(plain, workers, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
