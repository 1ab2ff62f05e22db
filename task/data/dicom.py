"""Reading a DICOM file as archives store it (used by :mod:`task.data.files`).

pydicom decodes the pixel data itself, compressed transfer syntaxes (JPEG, JPEG-LS,
JPEG 2000, RLE) through the pylibjpeg plugins, and its own functions then turn stored
values into what a radiologist sees: the modality LUT or rescale (slope, intercept), then
the VOI LUT or window (centre, width). ``MONOCHROME1`` (white = low values) is inverted, so
that every image of a site has bright bone whatever its archive wrote. Why not MONAI's
``PydicomReader``: it applies the rescale but not the VOI LUT or window, and the header
facts a site's readiness check prints (transfer syntax, bit depth) come from the same read.

Refused by name before any pixel is decoded: a file that is not DICOM or has no pixels, a
multi-frame image, a non-image SOP class (segmentation, structured report, RT plan, ...)
and a transfer syntax no installed decoder reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
)
from pydicom.uid import UID

from task.data.errors import BadFileError

PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: SOP class families that hold no image a classifier could read: waveforms, presentation
#: states, raw data / registration / segmentation (66), structured reports (88),
#: encapsulated documents (104) and radiotherapy objects (481).
NON_IMAGE_SOP_FAMILIES = tuple(
    f"1.2.840.10008.5.1.4.1.1.{n}" for n in ("9", "11", "66", "88", "104", "481")
)
#: RT Image Storage: a radiograph, the one image class of the radiotherapy family.
RT_IMAGE = "1.2.840.10008.5.1.4.1.1.481.1"


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM file's header says about its image, read before decoding it."""

    dataset: Dataset
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    transfer_syntax: str


def _is_non_image(sop_class: str) -> bool:
    return sop_class != RT_IMAGE and any(
        sop_class == family or sop_class.startswith(family + ".")
        for family in NON_IMAGE_SOP_FAMILIES
    )


def _check_content(path: Path, ds: Dataset) -> None:
    """Refuse a non-image SOP class, a file without pixels or a multi-frame image."""
    sop_class = UID(str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", "")))
    if _is_non_image(sop_class):
        raise BadFileError(path, f"SOP class {sop_class.name} is not an image")
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise BadFileError(path, "DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise BadFileError(path, f"multi-frame image (NumberOfFrames={frames}) is not supported")


def _check_decoder(path: Path, syntax: UID) -> None:
    """Refuse a transfer syntax that no installed plugin decodes, saying what to install."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise BadFileError(
            path, f"transfer syntax {syntax.name} ({syntax}) is not supported"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(
            f"{name}: {', '.join(deps)}" for name, deps in decoder.missing_dependencies.items()
        )
        raise BadFileError(path, f"no decoder installed for {syntax.name} ({missing})")


def read_header(path: Path) -> DicomHeader:
    """The file's header, its pixel data located but not read; BadFileError if refused."""
    try:
        # Values over 1 KB (the pixel data) stay on disk until the pixels are decoded.
        ds = pydicom.dcmread(path, defer_size="1 KB")
    except Exception as err:  # pydicom raises several types for broken headers
        raise BadFileError(path, f"not a readable DICOM file ({err})") from err
    _check_content(path, ds)
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows is None or columns is None:
        raise BadFileError(path, "DICOM file does not say its size (Rows, Columns)")
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)))
    if "PixelData" in ds:  # float pixel data is never compressed
        _check_decoder(path, syntax)
    return DicomHeader(
        dataset=ds,
        rows=int(rows),
        columns=int(columns),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        photometric=str(ds.get("PhotometricInterpretation", "")).upper(),
        transfer_syntax=syntax.name,
    )


def read_pixels(header: DicomHeader) -> np.ndarray:
    """The displayed image as float32 ``(C, H, W)``: decoded, modality LUT or rescale, VOI
    LUT or window, ``MONOCHROME1`` inverted; colour as RGB."""
    ds = header.dataset
    stored = ds.pixel_array  # YBR is converted to RGB by pydicom
    if header.photometric == "PALETTE COLOR":
        image = apply_color_lut(stored, ds)
    elif header.photometric.startswith("MONOCHROME"):
        image = apply_voi_lut(apply_modality_lut(stored, ds), ds)
    else:
        image = stored
    image = np.asarray(image, dtype=np.float32)
    if header.photometric == "MONOCHROME1":
        image = image.max() + image.min() - image
    return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
