"""Write real image files (PNG, JPEG, DICOM, NIfTI) for the data tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def pattern(h: int = 20, w: int = 30, dtype=np.uint8, high: int = 255) -> np.ndarray:
    """A non-symmetric test image: a bright pixel at (2, w-5) on a gradient."""
    img = np.tile(np.linspace(0, high // 2, w), (h, 1)).astype(dtype)
    img[2, w - 5] = high
    return img


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_jpeg(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)
    return path


def write_dicom(
    path: Path,
    array: np.ndarray,
    photometric: str = "MONOCHROME2",
    pixels: bool = True,
    compress: str | None = None,
    **attrs: object,
) -> Path:
    """A 12-bit DX image; ``attrs`` set on the dataset (window, rescale, SOP class, ...) and,
    with ``compress``, its pixel data encoded in that transfer syntax by pydicom."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels:
        ds.PixelData = array.astype(np.uint16).tobytes()
    for name, value in attrs.items():
        setattr(ds, name, value)
    if compress is not None:
        ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), path)
    return path
