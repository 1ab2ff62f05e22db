"""The site cache's effect for :mod:`scripts.bench_device`: the first epoch against later ones
at clinical resolution, from DICOM files as archives store them.

A folder site of ``images`` DICOM files (12-bit, RLE Lossless, ``source_px`` square:
PneumoniaMNIST's images upsampled, as the rest of the bench) is read by the project's own
path (:func:`task.data.loading.load_data`, the folder source with its cache) and preprocessed
to the bench's resolution; one model then trains epochs over it through the project's loader
(:func:`task.runtime.device.loader_options`: workers and pinned memory on CUDA). Reported:

- ``first_epoch``: decoding every file and writing the cache, then the first epoch;
- ``later_epoch``: an epoch over the arrays already loaded (the mean of the later epochs);
- ``next_process``: a cache hit (memory-mapping the stored arrays), then an epoch: what a
  deployed site's next round, or the next run, pays;
- ``uncached_process``: decoding every file again, then an epoch: what each of those paid
  without the cache. Its load is timed; its epoch is not run again: it trains the same
  arrays, so its epoch seconds are the later epochs' mean.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from scripts.bench_device_loops import Workload, project_model
from task.config import compose_config
from task.data.loading import load_data
from task.data.pneumoniamnist import load_npz, resolve_path
from task.data.splits import DataSplits
from task.runtime.device import loader_options
from task.training.engine import class_weights, train_epoch

CLASSES = ("normal", "pneumonia")
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", "MONOCHROME2", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)


def write_site(root: Path, images: int, source_px: int) -> Path:
    """``images`` DICOM files, half per class, from PneumoniaMNIST's training images."""
    pixels, labels = load_npz(resolve_path(None))["train"]
    upsample = torch.nn.functional.interpolate
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        chosen = np.flatnonzero(labels.reshape(-1) == c)[: images // 2]
        for i in chosen:
            small = torch.from_numpy(pixels[i].astype(np.float32))[None, None]
            big = upsample(small, size=(source_px, source_px), mode="bilinear")[0, 0]
            _write_dicom(root / name / f"{i}.dcm", (big.numpy() * 16).round())  # 8 -> 12 bit
    return root


def _epoch(work: Workload, model, optimizer, loss_fn, splits) -> float:
    feed = loader_options(work.device)
    loader = splits.train.loader(work.batch, shuffle=True, **feed)
    t0 = time.perf_counter()
    train_epoch(model, loader, optimizer, loss_fn, channels_last=True)
    if work.device.type == "cuda":
        torch.cuda.synchronize(work.device)
    return time.perf_counter() - t0


def _timed_load(cfg) -> tuple[float, DataSplits]:
    t0 = time.perf_counter()
    splits = load_data(cfg.data, cfg.transforms.preprocess)
    return time.perf_counter() - t0, splits


def _warm_up(work: Workload, model, optimizer, loss_fn, splits) -> None:
    """Untimed steps: the first steps allocate and (on CUDA) autotune, which no later epoch
    repeats and which is no part of reading data."""
    if not work.warmup:
        return
    loader = splits.train.loader(work.batch, shuffle=True)
    train_epoch(model, loader, optimizer, loss_fn, max_steps=work.warmup, channels_last=True)


def site_cache(work: Workload, out: Path, images: int, source_px: int, epochs: int) -> dict:
    """First epoch (cold cache) against later epochs, a warm process and an uncached one."""
    site = out / "cache_site"
    shutil.rmtree(site, ignore_errors=True)
    write_site(site / "images", images, source_px)
    overrides = [
        *work.overrides(limit=images),
        "data=folder",
        f"data.train={site / 'images'}",
        f"data.cache_dir={site / 'cache'}",
        "data.val_fraction=0.05",
    ]
    cfg = compose_config(overrides, config_name="train_central")
    uncached_cfg = compose_config([*overrides, "data.cache_dir=null"], "train_central")
    _timed_load(uncached_cfg)  # imports and decoder set-up, paid once per process anyway
    uncached_load, _ = _timed_load(uncached_cfg)
    cold_load, splits = _timed_load(cfg)
    model = project_model(cfg, splits, work.device)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    weight = class_weights(splits.train.labels, len(splits.classes)).to(work.device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    _warm_up(work, model, optimizer, loss_fn, splits)
    epochs_s = [_epoch(work, model, optimizer, loss_fn, splits) for _ in range(epochs)]
    warm_load, warm = _timed_load(cfg)
    warm_epoch = _epoch(work, model, optimizer, loss_fn, warm)
    n = len(splits.train)
    later = float(np.mean(epochs_s[1:])) if epochs > 1 else epochs_s[0]

    def figure(load: float, epoch: float) -> dict:
        return {"load_seconds": load, "epoch_seconds": epoch, "images_per_s": n / (load + epoch)}

    first = figure(cold_load, epochs_s[0])
    return {
        "files": images,
        "source": f"DICOM, RLE Lossless, 12-bit, {source_px}x{source_px} px",
        "train_images": n,
        "loader": loader_options(work.device),
        "first_epoch": first,
        "later_epoch": figure(0.0, later),
        "next_process": figure(warm_load, warm_epoch),
        "uncached_process": figure(uncached_load, later),
        "later_over_first": (n / later) / first["images_per_s"],
    }
