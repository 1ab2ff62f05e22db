"""A site's own images: a folder with one subfolder per class, or a CSV of ``path,label``.

Files are read through MONAI's ``LoadImage`` (PNG and JPEG with PIL, DICOM with pydicom,
NIfTI with nibabel), always as row-major ``(H, W)`` arrays so that every format and the
bundled npz agree on orientation. 8- and 16-bit grayscale are kept at full depth (intensity
scaling happens in the configured preprocessing); DICOM ``MONOCHROME1`` (white = low
values) is inverted; RGB(A) is turned into one luma channel when the model wants one.

Every file is read and checked when the data set is built, so a bad file is found before
training starts, never mid-epoch. Under ``on_bad_file="error"`` the first bad file stops
loading with a :class:`BadFileError` naming it and the reason; under ``"skip"`` it is left
out, counted and listed in the :class:`LoadReport`.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.transforms import LoadImage

from task.constants import IMAGE_SUFFIXES, LUMA_WEIGHTS
from task.data.errors import BadFileError, LoadReport, check_policy
from task.data.preprocess import preprocess_one

#: Refuse images larger than this many pixels (a decompression bomb or a wrong file).
MAX_PIXELS = 64_000_000


@dataclass(frozen=True)
class Record:
    """One image file and its class index."""

    path: Path
    label: int


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the image suffixes this module reads."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in IMAGE_SUFFIXES)


def _is_dicom(path: Path) -> bool:
    return path.name.lower().endswith((".dcm", ".dicom"))


def scan_folder(root: str | Path, classes: Sequence[str]) -> list[Record]:
    """List ``root/<class>/*`` image files; refuse unknown class folders and empty input."""
    root = Path(root)
    if not root.is_dir():
        raise BadFileError(root, "is not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in subdirs if p.name not in classes]
    if unknown:
        raise BadFileError(
            root, f"class folder(s) {unknown} are not in the class list {list(classes)}"
        )
    records = [
        Record(path, classes.index(sub.name))
        for sub in subdirs
        for path in sorted(sub.rglob("*"))
        if path.is_file() and is_image_file(path)
    ]
    if not records:
        raise BadFileError(
            root, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in class folders {list(classes)}"
        )
    return records


def read_csv(
    csv_path: str | Path, classes: Sequence[str], report: LoadReport, policy: str, split: str
) -> list[Record]:
    """Read ``path,label`` rows (paths relative to the CSV's folder; label by class name)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise BadFileError(csv_path, "CSV file not found")
    records = []
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise BadFileError(csv_path, f"needs columns 'path,label', has {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            path = csv_path.parent / row["path"]
            try:
                if row["label"] not in classes:
                    raise BadFileError(
                        path, f"label {row['label']!r} (CSV line {line}) not in {list(classes)}"
                    )
                if not path.is_file():
                    raise BadFileError(path, f"file named on CSV line {line} does not exist")
            except BadFileError as err:
                if policy == "error":
                    raise
                report.add_skip(split, err)
                continue
            records.append(Record(path, classes.index(row["label"])))
    if not records:
        raise BadFileError(csv_path, "no usable rows")
    return records


class ImageReader:
    """Read one image file into a finite float32 ``(C, H, W)`` array, or raise BadFileError.

    Args:
        channels: 1 for grayscale models (RGB is converted to luma), 3 for RGB models.
        max_pixels: refuse larger images.
    """

    def __init__(self, channels: int = 1, max_pixels: int = MAX_PIXELS) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels={channels} must be 1 or 3")
        self.channels = channels
        self.max_pixels = max_pixels

        # One loader per format, chosen by suffix; all three return row-major (H, W).
        def loader(reader) -> LoadImage:
            return LoadImage(
                reader=reader, image_only=True, ensure_channel_first=True, dtype=np.float32
            )

        self._loaders = {
            "dicom": loader(PydicomReader(swap_ij=False)),
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
        path = Path(path)
        if not path.is_file():
            raise BadFileError(path, "file does not exist")
        monochrome1 = False
        if _is_dicom(path):
            monochrome1 = self._check_dicom(path)
        try:
            image = np.asarray(self._loaders[self._kind(path)](str(path)), dtype=np.float32)
        except Exception as err:  # any reader failure is a bad file, reported by name
            raise BadFileError(
                path,
                f"cannot be read as an image ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else ''})",
            ) from err
        image = self._to_2d(path, image)
        if monochrome1:
            image = image.max() + image.min() - image
        return image

    @staticmethod
    def _check_dicom(path: Path) -> bool:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # pydicom raises several types for broken headers
            raise BadFileError(path, f"not a readable DICOM file ({err})") from err
        if "PixelData" not in header and "FloatPixelData" not in header:
            # stop_before_pixels hides PixelData; check the tag list of the full file
            full = pydicom.dcmread(path, specific_tags=["PixelData", "FloatPixelData"])
            if "PixelData" not in full and "FloatPixelData" not in full:
                raise BadFileError(path, "DICOM file has no pixel data")
        return str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"

    def _to_2d(self, path: Path, image: np.ndarray) -> np.ndarray:
        # ensure_channel_first gives (C, *spatial); drop singleton spatial dims (NIfTI z=1).
        spatial = [s for s in image.shape[1:] if s != 1] if image.ndim > 3 else image.shape[1:]
        if len(spatial) != 2:
            raise BadFileError(
                path, f"expected a 2-D image, got shape {tuple(image.shape[1:])} (a volume?)"
            )
        image = image.reshape(image.shape[0], *spatial)
        if image.shape[1] * image.shape[2] > self.max_pixels:
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


def load_records(
    records: Sequence[Record],
    reader: ImageReader,
    preprocess: Callable | None,
    policy: str,
    report: LoadReport,
    split: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and preprocess every record; returns ``(images (N,C,H,W), labels)``."""
    check_policy(policy)
    images, labels = [], []
    for record in records:
        try:
            image = reader(record.path)
            try:
                images.append(preprocess_one(image, preprocess))
            except Exception as err:  # a transform failing on this image: name the file
                raise BadFileError(record.path, f"preprocessing failed: {err}") from err
            labels.append(record.label)
        except BadFileError as err:
            if policy == "error":
                raise
            report.add_skip(split, err)
    if not images:
        raise BadFileError(split, "no usable images left in this split")
    report.loaded[split] = len(images)
    return np.stack(images), np.asarray(labels, dtype=np.int64)
