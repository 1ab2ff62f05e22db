"""Reading a site's image files (listed by :mod:`task.data.listing`).

PNG, JPEG and NIfTI are read through MONAI's ``LoadImage`` (PIL, nibabel); DICOM through
pydicom, with its modality and VOI transforms (:mod:`task.data.dicom`). Every format comes
out as row-major ``(C, H, W)`` so that all of them and the bundled npz agree on
orientation. 8- and 16-bit grayscale are kept at full depth (intensity scaling happens in
the configured preprocessing); RGB(A) is turned into one luma channel when the model wants
one.

Every file is read and checked when the data set is built, so a bad file is found before
training starts, never mid-epoch. Under ``on_bad_file="error"`` the first bad file stops
loading with a :class:`BadFileError` naming it and the reason; under ``"skip"`` it is left
out, counted and listed in the :class:`LoadReport`. A file's size and its header's image
size are checked before it is decoded, so that a small file declaring a huge image (a
decompression bomb, a corrupt header) is refused without allocating it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from monai.data import NibabelReader, PILReader
from monai.transforms import LoadImage
from PIL import Image

from task.constants import LUMA_WEIGHTS, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from task.data import dicom
from task.data.content import image_digest
from task.data.errors import BadFileError, LoadReport, check_policy
from task.data.listing import Record
from task.data.preprocess import preprocess_one

#: MONAI's GPU-only DICOM plugin: its logger and its warning when it is absent.
NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
NVIMGCODEC_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin"
#: Bits per sample of PIL's image modes (what a site's readiness check prints).
PIL_MODE_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "RGB": 8, "RGBA": 8, "I": 32, "F": 32}


def _is_dicom(path: Path) -> bool:
    return path.name.lower().endswith((".dcm", ".dicom"))


@dataclass(frozen=True)
class ImageFacts:
    """What a site's readiness check prints of a file: the image's size, and from its header
    the bits per sample, photometric interpretation (PIL's mode for PNG and JPEG) and
    encoding (the DICOM transfer syntax, else the format)."""

    height: int
    width: int
    bits: int
    photometric: str
    encoding: str


class ImageReader:
    """Read one image file into a finite float32 ``(C, H, W)`` array, or raise BadFileError.

    Args:
        channels: 1 for grayscale models (RGB is converted to luma), 3 for RGB models.
        max_pixels: refuse larger images, from the size the file's header declares.
        max_bytes: refuse larger files.
    """

    def __init__(
        self,
        channels: int = 1,
        max_pixels: int = MAX_IMAGE_PIXELS,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 or 3")
        self.channels = channels
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes

        # One loader per format, chosen by suffix; both return row-major (H, W).
        def loader(reader) -> LoadImage:
            # LoadImage also builds MONAI's every reader, among them the GPU-only
            # nvImageCodec DICOM reader, which warns twice per loader that it is unavailable;
            # this project reads DICOM with pydicom itself (task.data.dicom).
            logging.getLogger(NVIMGCODEC_LOGGER).setLevel(logging.ERROR)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=NVIMGCODEC_WARNING, category=UserWarning)
                return LoadImage(
                    reader=reader, image_only=True, ensure_channel_first=True, dtype=np.float32
                )

        self._loaders = {
            "nifti": loader(NibabelReader()),
            "pil": loader(PILReader(reverse_indexing=False)),
        }

    @staticmethod
    def _kind(path: Path) -> str:
        name = path.name.lower()
        if _is_dicom(path):
            return "dicom"
        if name.endswith((".nii", ".nii.gz")):
            return "nifti"
        return "pil"

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.read(path)[0]

    def read(self, path: str | Path) -> tuple[np.ndarray, ImageFacts]:
        """The image as :meth:`__call__` returns it, and its header's facts."""
        path = Path(path)
        if not path.is_file():
            raise BadFileError(path, "file does not exist")
        size = path.stat().st_size
        if size == 0:
            raise BadFileError(path, "file is empty")
        if size > self.max_bytes:
            raise BadFileError(path, f"file of {size} bytes exceeds max_bytes={self.max_bytes}")
        kind = self._kind(path)
        try:
            if kind == "dicom":
                header = dicom.read_header(path)
                facts = self._dicom_facts(path, header)
                image = dicom.read_pixels(header)
            else:
                facts = self._check_header(path, kind)
                image = np.asarray(self._loaders[kind](str(path)), dtype=np.float32)
        except BadFileError:
            raise
        except Exception as err:  # any reader failure is a bad file, reported by name
            raise BadFileError(
                path,
                f"cannot be read as an image ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else ''})",
            ) from err
        image = self._to_2d(path, image)
        return image, replace(facts, height=image.shape[1], width=image.shape[2])

    def _check_size(self, path: Path, shape: Sequence[int], what: str) -> None:
        if len([s for s in shape if s != 1]) > 2:
            raise BadFileError(
                path, f"expected a 2-D image, the {what} declares shape {tuple(shape)} (a volume?)"
            )
        if math.prod(shape) > self.max_pixels:
            raise BadFileError(
                path,
                f"image of {'x'.join(map(str, shape))} pixels (from the {what}) exceeds "
                f"max_pixels={self.max_pixels}",
            )

    def _dicom_facts(self, path: Path, header: dicom.DicomHeader) -> ImageFacts:
        self._check_size(path, (header.rows, header.columns), "DICOM header")
        return ImageFacts(
            header.rows,
            header.columns,
            header.bits_stored,
            header.photometric,
            header.transfer_syntax,
        )

    def _check_header(self, path: Path, kind: str) -> ImageFacts:
        """Refuse from the header alone a volume or an image beyond ``max_pixels``."""
        if kind == "nifti":
            image = nib.load(str(path))  # the header only; the data stay on disk
            shape = image.shape
            self._check_size(path, shape[:3], "NIfTI header")
            if math.prod(shape) > 4 * self.max_pixels:
                raise BadFileError(path, f"NIfTI header declares shape {shape}: too large")
            return ImageFacts(0, 0, image.get_data_dtype().itemsize * 8, "-", "NIfTI")
        with warnings.catch_warnings():  # PIL warns before its own (higher) limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                with Image.open(path) as image:  # lazy: reads the header only
                    (width, height), mode, fmt = image.size, image.mode, image.format
            except Image.DecompressionBombError as err:
                raise BadFileError(path, f"exceeds max_pixels={self.max_pixels} ({err})") from err
        self._check_size(path, (height, width), "file header")
        bits = 16 if mode.startswith("I;16") else PIL_MODE_BITS.get(mode, 0)
        return ImageFacts(height, width, bits, mode, str(fmt))

    def _to_2d(self, path: Path, image: np.ndarray) -> np.ndarray:
        # ensure_channel_first gives (C, *spatial); drop singleton spatial dims (NIfTI z=1).
        spatial = [s for s in image.shape[1:] if s != 1] if image.ndim > 3 else image.shape[1:]
        if len(spatial) != 2:
            raise BadFileError(
                path, f"expected a 2-D image, got shape {tuple(image.shape[1:])} (a volume?)"
            )
        image = image.reshape(image.shape[0], *spatial)
        if image.shape[1] * image.shape[2] > self.max_pixels:  # also checked in the header
            raise BadFileError(
                path,
                f"image of {image.shape[1]}x{image.shape[2]} pixels "
                f"exceeds max_pixels={self.max_pixels}",
            )
        if not np.isfinite(image).all():
            raise BadFileError(path, "image has NaN or infinite pixel values")
        c = image.shape[0]
        if c == 4:  # RGBA: drop alpha
            image, c = image[:3], 3
        if c not in (1, 3):
            raise BadFileError(path, f"{c} channels; expected 1 (grayscale) or 3 (RGB)")
        if self.channels == 1 and c == 3:
            image = np.tensordot(np.asarray(LUMA_WEIGHTS, np.float32), image, axes=1)[None]
        elif self.channels == 3 and c == 1:
            image = np.repeat(image, 3, axis=0)
        return image


def load_record(
    record: Record, reader: ImageReader, preprocess: Callable | None
) -> tuple[np.ndarray, ImageFacts]:
    """One file read, checked and preprocessed as training sees it, and its facts."""
    image, facts = reader.read(record.path)
    return _preprocessed(record, image, preprocess), facts


def _preprocessed(record: Record, image: np.ndarray, preprocess: Callable | None) -> np.ndarray:
    try:
        return preprocess_one(image, preprocess)
    except Exception as err:  # a transform failing on this image: name the file
        raise BadFileError(record.path, f"preprocessing failed: {err}") from err


class LoadedRecords(NamedTuple):
    """What :func:`load_records` kept: preprocessed images ``(N, C, H, W)``, labels, each
    kept file's path and the digest of its image as read (:mod:`task.data.content`)."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    digests: list[bytes]


def load_records(
    records: Sequence[Record],
    reader: ImageReader,
    preprocess: Callable | None,
    policy: str,
    report: LoadReport,
    split: str,
) -> LoadedRecords:
    """Read, check and preprocess every record; what is kept, in the records' order."""
    check_policy(policy)
    images, labels, paths, digests = [], [], [], []
    for record in records:
        try:
            image, _ = reader.read(record.path)
            images.append(_preprocessed(record, image, preprocess))
            labels.append(record.label)
            paths.append(record.path)
            digests.append(image_digest(image))
        except BadFileError as err:
            if policy == "error":
                raise
            report.add_skip(split, err)
    if not images:
        raise BadFileError(split, "no usable images left in this split")
    report.loaded[split] = len(images)
    return LoadedRecords(np.stack(images), np.asarray(labels, dtype=np.int64), paths, digests)
