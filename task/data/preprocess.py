"""Apply the configured deterministic preprocessing once, when data is loaded."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta


@contextmanager
def no_metadata() -> Iterator[None]:
    """MONAI's metadata tracking off for the block, then restored (it is process-wide).

    Why: on in-memory arrays there is no metadata worth carrying, and wrapping every image
    in a ``MetaTensor`` for each transform is most of the cost of per-image MONAI
    transforms at small resolutions.
    """
    before = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(before)


def preprocess_one(image: np.ndarray | torch.Tensor, preprocess: Callable | None) -> np.ndarray:
    """``(C, H, W)`` image in, preprocessed float32 ``(C, H', W')`` array out."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"expected a channel-first 2-D image (C, H, W), got {array.shape}")
    if preprocess is not None:
        out = preprocess(array)
        array = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return np.ascontiguousarray(array, dtype=np.float32)


def preprocess_array(images: Iterable[np.ndarray], preprocess: Callable | None) -> np.ndarray:
    """Stack of 2-D grayscale images ``(N, H, W)`` to a preprocessed ``(N, 1, H', W')``."""
    with no_metadata():
        out = [preprocess_one(np.asarray(img)[None], preprocess) for img in images]
    if not out:
        raise ValueError("no images to preprocess")
    return np.stack(out)
