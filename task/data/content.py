"""A labelled set's content hash: which images, with which labels, whatever their order.

Why: some comparisons hold for one data set only (the expert readers of the PriMIA study
read PneumoniaMNIST's published test images), and a file name, a path or a config flag
says nothing about what was actually evaluated. The hash is taken over the images as read,
before any preprocessing, so that the same images at another resolution or normalisation
still hash the same, and a changed pixel, label, added or missing image does not.

Each image's digest is the SHA-256 of its shape and its pixel values as little-endian
float32 in ``(C, H, W)`` order (integer pixels are exact in float32, so an 8-bit PNG and
the npz array it was written from agree). A set's hash is the SHA-256 over the sorted
digests of ``class name, NUL, image digest``: sorting is the canonical order, so the npz
and a folder export of the same split, listed in any order, hash alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np


def image_digest(image: np.ndarray) -> bytes:
    """SHA-256 of one raw image ``(C, H, W)``: its shape and its float32 pixel values."""
    array = np.ascontiguousarray(image, dtype="<f4")
    if array.ndim != 3:
        raise ValueError(f"expected a channel-first 2-D image (C, H, W), got {array.shape}")
    digest = hashlib.sha256(np.asarray(array.shape, dtype="<i8").tobytes())
    digest.update(array.tobytes())
    return digest.digest()


def content_hash(digests: Iterable[bytes], labels: Iterable[int], classes: Sequence[str]) -> str:
    """The set's hash (hex) from its images' digests and their class indices in ``classes``."""
    items = sorted(
        hashlib.sha256(classes[int(label)].encode() + b"\0" + digest).digest()
        for digest, label in zip(digests, labels, strict=True)
    )
    return hashlib.sha256(b"".join(items)).hexdigest()


def array_content_hash(images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> str:
    """:func:`content_hash` of grayscale images ``(N, H, W)`` as an npz stores them."""
    return content_hash((image_digest(image[None]) for image in images), labels, classes)
