"""Training throughput for :mod:`scripts.bench_device`: the project's training path against a
plain PyTorch loop in the same process, same network, weights, batch, optimiser and precision.

The project's path: the network from the ``model`` config by the project's factory, the
optimiser from the ``optimizer`` config, the data split's own loader and
:func:`task.training.engine.train_epoch` (channels-last, as the centralised run trains). The
plain loop: a copy of the same network, the optimiser's class with its learning rate and
weight decay, random batches indexed from the same tensors, and nothing else.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from task.config import compose_config
from task.data.splits import DataSplits
from task.models.factory import build_model, count_parameters
from task.runtime.device import autocast, grad_scaler, prepare_model
from task.training.engine import class_weights, train_epoch

#: ResNet-18 at 224 px as hospitals train it: the ImageNet stem (7x7 stride-2 convolution and
#: max-pool). conf/model/resnet18.yaml's small-image stem keeps 28 px inputs whole, and at
#: 224 px it computes on 224x224 maps in its first stage, many times the usual network's work.
IMAGENET_STEM = {
    "resnet18": ["model.conv1_t_size=7", "model.conv1_t_stride=2", "model.no_max_pool=false"]
}


@dataclass(frozen=True)
class Workload:
    """What every figure of one model shares."""

    model: str
    resolution: int
    batch: int
    steps: int
    warmup: int
    precision: str  # fp32 | bf16 on the CPU; on CUDA both loops use the engine's autocast
    device: torch.device
    model_overrides: tuple[str, ...] = ()  # e.g. IMAGENET_STEM[model]

    def overrides(self, limit: int) -> list[str]:
        """Hydra overrides of the model, resolution, batch and data size."""
        return [
            "logger=none",
            f"model={self.model}",
            *self.model_overrides,
            f"data.resolution={self.resolution}",
            f"data.limit={limit}",
            "transforms=no_augment",
            f"train.batch_size={self.batch}",
        ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_data(work: Workload, limit: int) -> tuple[DictConfig, DataSplits]:
    """The centralised config and PneumoniaMNIST's first ``limit`` images of each split,
    upsampled to ``work.resolution`` by the project's preprocessing."""
    cfg = compose_config(work.overrides(limit), config_name="train_central")
    data = instantiate(cfg.data).load(preprocess=instantiate(cfg.transforms.preprocess))
    return cfg, data


def project_model(cfg: DictConfig, data: DataSplits, device: torch.device) -> torch.nn.Module:
    return prepare_model(build_model(cfg.model, data.in_shape, len(data.classes)), device)


def _project_run(work: Workload, model, optimizer, loss_fn, data: DataSplits, steps: int):
    stats = train_epoch(  # the engine moves each batch to the model's device itself
        model,
        data.train.loader(work.batch, shuffle=True),
        optimizer,
        loss_fn,
        max_steps=steps,
        channels_last=True,
        bf16=work.precision == "bf16",
    )
    return stats["num_examples"]


def _plain_run(work: Workload, model, optimizer, loss_fn, images, labels, steps: int) -> int:
    """The loop a PyTorch user writes: sample, forward, loss, backward, step."""
    model.train()
    scaler = grad_scaler(work.device)  # the engine's precision: fp16 on CUDA needs a scaler
    total = torch.zeros((), device=work.device)
    for _ in range(steps):
        idx = torch.randint(len(labels), (work.batch,))
        x = images[idx].to(work.device, non_blocking=True)
        y = labels[idx].to(work.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast(work.device, cpu_bf16=work.precision == "bf16"):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach()
    return steps * work.batch


def _timed(work: Workload, run) -> float:
    """Images per second of ``run(steps)`` after ``run(warmup)``."""
    if work.warmup:
        run(work.warmup)
    _sync(work.device)
    t0 = time.perf_counter()
    images = run(work.steps)
    _sync(work.device)
    return images / (time.perf_counter() - t0)


def plain_images_per_s(work: Workload, model: torch.nn.Module, data: DataSplits, opt_cfg) -> float:
    """A plain loop's images/s on a copy of ``model``, with the same class-weighted loss."""
    model = copy.deepcopy(model)
    optimizer = _plain_optimizer(model, opt_cfg)
    counts = torch.bincount(torch.from_numpy(data.train.labels).long(), minlength=2).float()
    weight = (counts.sum() / counts.clamp(min=1) / len(counts)).to(work.device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    images = torch.from_numpy(data.train.images)
    labels = torch.from_numpy(data.train.labels).long()
    return _timed(work, lambda n: _plain_run(work, model, optimizer, loss_fn, images, labels, n))


def _plain_optimizer(model: torch.nn.Module, opt_cfg: DictConfig) -> torch.optim.Optimizer:
    """The configured optimiser's class, learning rate and weight decay, written out."""
    cls = instantiate(opt_cfg).func
    return cls(model.parameters(), lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)


def centralised(work: Workload) -> dict:
    """The project's training path against the plain loop: images/s and their ratio."""
    cfg, data = load_data(work, work.batch * (work.steps + work.warmup))
    model = project_model(cfg, data, work.device)
    initial = copy.deepcopy(model)  # the plain loop starts from the same weights
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    weight = class_weights(data.train.labels, len(data.classes)).to(work.device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    project = _timed(work, lambda n: _project_run(work, model, optimizer, loss_fn, data, n))
    plain = plain_images_per_s(work, initial, data, cfg.optimizer)
    return {
        "parameters": count_parameters(model),
        "model_overrides": list(work.model_overrides),
        "project_images_per_s": project,
        "plain_images_per_s": plain,
        "ratio": project / plain,
        "target_ratio_at_least_0.9": project / plain >= 0.9,
    }
