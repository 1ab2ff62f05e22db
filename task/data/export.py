"""Write simulated sites' images as real files: ``<out>/<site>/<class>/<index>.png``.

Used to stand up a local deployment in which every SuperNode reads its own folder from disk,
as a hospital would, instead of a partition of an in-memory array.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from task.constants import PNEUMONIAMNIST_CLASSES
from task.data.pneumoniamnist import load_npz, resolve_path, verify_file


def export_sites(
    out_dir: Path,
    partitioner: Callable[[np.ndarray, int, int], list[np.ndarray]],
    num_sites: int,
    seed: int,
    *,
    npz_path: str | None = None,
    limit_per_site: int | None = None,
) -> list[Path]:
    """Partition PneumoniaMNIST's train + val images across sites and write them as PNGs."""
    path = resolve_path(npz_path)
    verify_file(path)
    raw = load_npz(path)
    images = np.concatenate([raw["train"][0], raw["val"][0]])
    labels = np.concatenate([raw["train"][1], raw["val"][1]])
    folders = []
    for site, index in enumerate(partitioner(labels, num_sites, seed)):
        folder = out_dir / f"site-{site}"
        for i in index[:limit_per_site] if limit_per_site else index:
            target = folder / PNEUMONIAMNIST_CLASSES[labels[i]] / f"{i:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(target)
        folders.append(folder)
    return folders


def export_test_images(out_dir: Path, count: int, *, npz_path: str | None = None) -> list[Path]:
    """Write the first ``count`` images of the published test split as
    ``<out>/<index>_<class>.png`` (the true class in the name, for checking a diagnosis)."""
    path = resolve_path(npz_path)
    verify_file(path)
    images, labels = load_npz(path)["test"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(min(count, len(images))):
        target = out_dir / f"{i:04d}_{PNEUMONIAMNIST_CLASSES[labels[i]]}.png"
        Image.fromarray(images[i]).save(target)
        written.append(target)
    return written
