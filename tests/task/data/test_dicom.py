"""DICOM as archives store it: rescale, window, VOI LUT, compressed transfer syntaxes, and
the refusals of what is not one 2-D image. Every file is built here with pydicom."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SegmentationStorage,
)

from task.data.errors import BadFileError
from task.data.files import ImageReader
from tests.factories import pattern, write_dicom

STORED = pattern(dtype=np.uint16, high=4000)  # 12 bits stored, values 0..4000
#: Large enough for JPEG 2000's default number of wavelet resolutions.
LARGE = pattern(64, 96, dtype=np.uint16, high=4000)


@pytest.fixture(scope="module")
def reader() -> ImageReader:
    return ImageReader(channels=1)


def _dicom(path: Path, array: np.ndarray = STORED, compress=None, **attrs) -> Path:
    return write_dicom(path, array, compress=compress, **attrs)


def _window(
    x: np.ndarray, centre: float, width: float, low: float = 0.0, high: float = 4095.0
) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear window onto ``[low, high]`` (the range the modality
    transform can output), written out independently of pydicom."""
    c, w = centre - 0.5, width - 1.0
    y = ((x - c) / w + 0.5) * (high - low) + low
    return np.where(x <= c - w / 2, low, np.where(x > c + w / 2, high, y))


def test_plain_dicom_gives_its_stored_values(tmp_path: Path, reader: ImageReader) -> None:
    out, facts = reader.read(_dicom(tmp_path / "plain.dcm"))
    np.testing.assert_array_equal(out[0], STORED.astype(np.float32))
    assert (facts.height, facts.width, facts.bits) == (20, 30, 12)
    assert (facts.photometric, facts.encoding) == ("MONOCHROME2", "Explicit VR Little Endian")


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path, reader: ImageReader) -> None:
    path = _dicom(tmp_path / "ct.dcm", RescaleSlope=2, RescaleIntercept=-1024)
    np.testing.assert_allclose(reader(path)[0], STORED * 2.0 - 1024)


def test_window_centre_and_width_are_applied(tmp_path: Path, reader: ImageReader) -> None:
    out = reader(_dicom(tmp_path / "win.dcm", WindowCenter=2000, WindowWidth=1000))[0]
    np.testing.assert_allclose(out, _window(STORED.astype(np.float64), 2000, 1000), atol=1e-3)
    assert out.min() == 0 and out.max() == 4095  # the window saturates both ends


def test_window_applies_to_rescaled_values(tmp_path: Path, reader: ImageReader) -> None:
    """Hounsfield units first (modality), then the soft-tissue window (VOI) on them."""
    path = _dicom(
        tmp_path / "hu.dcm",
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=40,
        WindowWidth=400,
    )
    hu = STORED.astype(np.float64) - 1000
    expected = _window(hu, 40, 400, low=0 - 1000, high=4095 - 1000)
    np.testing.assert_allclose(reader(path)[0], expected, atol=1e-3)


def test_voi_lut_sequence_is_applied(tmp_path: Path, reader: ImageReader) -> None:
    lut = pydicom.Dataset()
    table = (np.sqrt(np.arange(4096)) * 1000).astype(np.uint16)  # a non-linear VOI
    lut.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first, bits
    lut.add_new(0x00283006, "US", table.tolist())  # LUT Data
    path = _dicom(tmp_path / "lut.dcm", VOILUTSequence=Sequence([lut]))
    np.testing.assert_array_equal(reader(path)[0], table[STORED].astype(np.float32))


def test_monochrome1_is_inverted_after_the_window(tmp_path: Path, reader: ImageReader) -> None:
    window = {"WindowCenter": 2000, "WindowWidth": 1000}
    path = _dicom(tmp_path / "m1.dcm", PhotometricInterpretation="MONOCHROME1", **window)
    windowed = _window(STORED.astype(np.float64), 2000, 1000)
    expected = windowed.max() + windowed.min() - windowed
    np.testing.assert_allclose(reader(path)[0], expected, atol=1e-3)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless], ids=str)
def test_lossless_compression_reads_as_the_uncompressed_file(
    tmp_path: Path, reader: ImageReader, syntax
) -> None:
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no installed encoder writes {syntax.name}; its decoder is pylibjpeg's")
    window = {"WindowCenter": 2000, "WindowWidth": 1000}
    path = _dicom(tmp_path / "c.dcm", LARGE, compress=syntax, **window)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    out, facts = reader.read(path)
    plain = reader(_dicom(tmp_path / "p.dcm", LARGE, **window))
    np.testing.assert_array_equal(out, plain)
    assert facts.encoding == syntax.name


def test_jpeg_baseline_decodes_through_the_plugins(tmp_path: Path, reader: ImageReader) -> None:
    """Pillow writes the JPEG stream; pydicom cannot, so it is encapsulated here by hand."""
    gray = pattern()  # 8-bit
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=95)
    path = write_dicom(tmp_path / "jpeg.dcm", gray)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    out, facts = reader.read(path)
    decoded_by_pil = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32)
    np.testing.assert_allclose(out[0], decoded_by_pil, atol=2)
    assert facts.encoding == JPEGBaseline8Bit.name


def test_multi_frame_is_refused_by_name(tmp_path: Path, reader: ImageReader) -> None:
    path = _dicom(tmp_path / "cine.dcm", np.concatenate([STORED, STORED]), NumberOfFrames=2)
    with pytest.raises(BadFileError, match=r"cine\.dcm: multi-frame image \(NumberOfFrames=2\)"):
        reader(path)


def test_segmentation_is_refused_as_no_image(tmp_path: Path, reader: ImageReader) -> None:
    path = _dicom(tmp_path / "seg.dcm", SOPClassUID=SegmentationStorage)
    with pytest.raises(
        BadFileError, match=r"seg\.dcm: SOP class Segmentation Storage is not an image"
    ):
        reader(path)


def test_structured_report_is_refused_as_no_image(tmp_path: Path, reader: ImageReader) -> None:
    path = _dicom(tmp_path / "sr.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11")
    with pytest.raises(BadFileError, match=r"SOP class Basic Text SR Storage is not an image"):
        reader(path)


def test_rt_image_is_read(tmp_path: Path, reader: ImageReader) -> None:
    """The one image class among the radiotherapy objects that are refused."""
    path = _dicom(tmp_path / "portal.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.481.1")
    np.testing.assert_array_equal(reader(path)[0], STORED.astype(np.float32))


def test_transfer_syntax_without_a_decoder_is_refused(tmp_path: Path, reader: ImageReader) -> None:
    path = _dicom(tmp_path / "video.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    ds.PixelData = encapsulate([b"\0" * 16])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(BadFileError, match=r"video\.dcm: transfer syntax MPEG2 .* not supported"):
        reader(path)


def test_rgb_dicom_becomes_luma(tmp_path: Path, reader: ImageReader) -> None:
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    path = write_dicom(tmp_path / "rgb.dcm", np.zeros((8, 9), np.uint16))
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    ds.save_as(path, enforce_file_format=True)
    out = reader(path)
    assert out.shape == (1, 8, 9)
    np.testing.assert_allclose(out, 0.299 * 100 + 0.587 * 200 + 0.114 * 50, rtol=1e-5)


def test_palette_colour_goes_through_its_lookup_table(tmp_path: Path) -> None:
    index = np.array([[0, 1], [2, 3]], np.uint8)
    tables = {"Red": [0, 255, 0, 0], "Green": [0, 0, 255, 0], "Blue": [0, 0, 0, 255]}
    path = write_dicom(tmp_path / "palette.dcm", np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = index.tobytes()
    for colour, values in tables.items():  # 16-bit entries
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [4, 0, 16])
        data = (np.array(values, "<u2") * 256).tobytes()
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", data)
    ds.save_as(path, enforce_file_format=True)
    out = ImageReader(channels=3)(path)
    assert out.shape == (3, 2, 2)
    np.testing.assert_array_equal(out[:, 0, 1], [255 * 256, 0, 0])  # index 1: red
    np.testing.assert_array_equal(out[:, 1, 1], [0, 0, 255 * 256])  # index 3: blue
