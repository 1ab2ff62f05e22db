"""A deployed site's data load, cold against warm cache: ``python -m scripts.bench_site_cache``.

Writes ``--images`` PneumoniaMNIST training images (the bundled file) as PNGs into a site
folder ``<class>/<index>.png``, once at 28x28 and once upsampled to 224x224, and times
:func:`task.data.sites.folder_site` on it: uncached (decode and preprocess every file, as every
message's process did), cold (the same plus writing the cache), warm (a hit: stat check of
every file, memory-mapped arrays) and warm after the file index is lost (every file hashed
again). Each warm load then trains one short local round on the read-only arrays, to show
that training works on them. Writes ``bench_site_cache.json`` with the machine's facts.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from task.config import compose_config
from task.constants import PNEUMONIAMNIST_CLASSES, REPO_ROOT
from task.data.cache import FILE_INDEX
from task.data.pneumoniamnist import load_npz, resolve_path, verify_file
from task.data.sites import folder_site
from task.evaluation.report import write_benchmark
from task.federation.local_round import local_train
from task.models.factory import build_model
from task.runtime.machine import machine_facts


def _write_site(root: Path, images: np.ndarray, labels: np.ndarray, side: int) -> int:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = root / PNEUMONIAMNIST_CLASSES[int(label)] / f"{i:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image)
        if side != image.shape[0]:
            picture = picture.resize((side, side), Image.Resampling.BILINEAR)
        picture.save(target)
    return sum(p.stat().st_size for p in root.rglob("*.png"))


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _bench_side(work: Path, images, labels, side: int, repeats: int) -> dict:
    root, cache = work / f"site-{side}", work / f"state-{side}" / "data-cache"
    png_bytes = _write_site(root, images, labels, side)
    cfg = compose_config(
        ["experiment=fed_quick", "secure=none", "data=folder", "data.train=unused",
         f"data.resolution={side}", "federation.local_steps=3"]
    )  # fmt: skip

    def load(cache_dir: Path | None):
        return folder_site(cfg, "bench", 0, str(root), cache_dir).splits

    uncached, _ = _timed(lambda: load(None), 1)
    t0 = time.perf_counter()
    load(cache)  # cold: decode, preprocess and write the entry
    cold = time.perf_counter() - t0
    warm, splits = _timed(lambda: load(cache), repeats)

    def rehash():
        (cache / FILE_INDEX).unlink()
        return load(cache)

    warm_rehash, _ = _timed(rehash, repeats)
    assert not splits.train.images.flags.writeable  # the memory-mapped hit
    site = folder_site(cfg, "bench", 0, str(root), cache)
    model = build_model(cfg.model, site.splits.in_shape, 2)
    t0 = time.perf_counter()
    trained = local_train(model, site, cfg, 1)
    train_seconds = time.perf_counter() - t0
    cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    return {
        "side": side,
        "images": len(images),
        "png_bytes": png_bytes,
        "cache_bytes": cache_bytes,
        "uncached_seconds": uncached,
        "cold_seconds": cold,
        "warm_seconds": warm,
        "warm_rehash_seconds": warm_rehash,
        "cold_over_warm": cold / warm,
        "uncached_over_warm": uncached / warm,
        "uncached_over_warm_rehash": uncached / warm_rehash,
        "train_on_warm": {
            "steps": cfg.federation.local_steps,
            "seconds": train_seconds,
            "loss": trained.loss,
            "num_examples": trained.num_examples,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "bench_site_cache")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--sides", type=int, nargs="+", default=[28, 224])
    parser.add_argument("--repeats", type=int, default=5, help="warm loads timed (median)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = resolve_path(None)
    verify_file(path)
    images, labels = load_npz(path)["train"]
    images, labels = images[: args.images], labels[: args.images]
    work = Path(tempfile.mkdtemp(prefix="bench_site_cache-"))
    try:
        results = [_bench_side(work, images, labels, s, args.repeats) for s in args.sides]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        r["side"]: {k: round(v, 3) for k, v in r.items() if isinstance(v, float)} for r in results
    }
    write_benchmark(
        {"machine": machine_facts(), "results": results},
        args.out / "bench_site_cache.json",
        summary,
    )


if __name__ == "__main__":
    main()
