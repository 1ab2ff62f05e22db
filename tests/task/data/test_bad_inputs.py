"""The bad-input corpus (issue 9): every kind of bad file a site may hold, made by the test
itself, and what each one does.

* under ``on_bad_file: error``: a :class:`BadFileError` naming the file and the reason;
* under ``on_bad_file: skip``: the file left out, counted and listed with its reason, and
  the site's good images loaded, so that one bad file never stops a federation;
* at the encrypted-diagnosis client: the same refusal by name (tests/client/test_diagnose).

Every file of :func:`build_corpus` is bad; the source-level cases (a label outside the
class list, an empty site folder, a CSV naming missing files) follow it.
"""

from __future__ import annotations

import gzip
import os
import re
import resource
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import Resize

from task.constants import MAX_IMAGE_BYTES
from task.data.errors import BadFileError, LoadReport
from task.data.files import ImageReader
from task.data.folder import ImageFolderSource
from task.data.listing import read_csv, scan_folder
from tests.factories import pattern, write_dicom, write_nifti, write_png

CLASSES = ["normal", "pneumonia"]
#: A file name that is not UTF-8 (Latin-1 "ÿ"), as a Linux file system may hold one.
NON_UTF8 = b"bad\xff.png"


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width x height`` 8-bit gray pixels, with a few rows of
    data: a decompression bomb's header without its payload."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _truncated(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _float_dicom(path: Path, array: np.ndarray) -> Path:
    """A DICOM of 32-bit float pixels (Float Pixel Data), such as a parametric map."""
    write_dicom(path, np.zeros(array.shape, np.uint16), pixels=False)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated = 32
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.FloatPixelData = array.astype(np.float32).tobytes()
    ds.save_as(path)
    return path


def _multiframe_dicom(path: Path, frames: int) -> Path:
    img = pattern(dtype=np.uint16, high=4000)
    write_dicom(path, img)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = frames
    ds.PixelData = np.stack([img] * frames).tobytes()
    ds.save_as(path)
    return path


def _nifti_declaring(path: Path, *dims: int) -> Path:
    """A NIfTI header declaring ``dims`` of float32 over no data at all."""
    header = nib.Nifti1Header()
    header.set_data_shape(dims)
    header.set_data_dtype(np.float32)
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4)))
    return path


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (a hole)."""
    with path.open("wb") as fh:
        fh.truncate(size)
    return path


@dataclass(frozen=True)
class BadFile:
    """One bad file: how to make it in a folder, and the reason its error must give."""

    id: str
    name: str | bytes
    make: Callable[[Path], object]
    reason: str

    def build(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = Path(os.fsdecode(os.path.join(os.fsencode(folder), os.fsencode(self.name))))
        self.make(path)
        return path

    @property
    def shown(self) -> str:
        """The file name as an error message shows it (not-UTF-8 bytes as ``\\xff``)."""
        return os.fsencode(self.name).decode("utf-8", "backslashreplace")


def _good_png(path: Path) -> None:
    write_png(path, pattern(200, 200))


CORPUS = [
    BadFile(
        "truncated-png",
        "trunc.png",
        lambda p: (_good_png(p), _truncated(p, 0.5)),
        "cannot be read as an image",
    ),
    BadFile("text-as-png", "text.png", lambda p: p.write_text("hello"), "cannot be read"),
    BadFile("empty-file", "empty.jpg", lambda p: p.write_bytes(b""), "file is empty"),
    BadFile(
        "truncated-dicom",
        "trunc.dcm",
        lambda p: _truncated(write_dicom(p, pattern(64, 64, np.uint16, 4000)), 0.6),
        r"cannot be read as an image .*pixel data is less than expected",
    ),
    BadFile(
        "truncated-dicom-header",
        "trunchead.dcm",
        lambda p: _truncated(write_dicom(p, pattern(64, 64, np.uint16, 4000)), 0.02),
        "not a readable DICOM file|no pixel data",
    ),
    BadFile(
        "dicom-without-pixels",
        "nopix.dcm",
        lambda p: write_dicom(p, pattern(dtype=np.uint16), pixels=False),
        "DICOM file has no pixel data",
    ),
    BadFile(
        "nan-pixels-nifti",
        "nan.nii.gz",
        lambda p: write_nifti(p, np.where(pattern() > 100, np.nan, pattern())),
        "NaN or infinite pixel values",
    ),
    BadFile(
        "inf-pixels-float-dicom",
        "inf.dcm",
        lambda p: _float_dicom(p, np.where(pattern() > 100, np.inf, pattern())),
        "NaN or infinite pixel values",
    ),
    BadFile(
        "3d-volume-nifti",
        "vol.nii.gz",
        lambda p: write_nifti(p, np.zeros((8, 8, 5))),
        r"expected a 2-D image, .*\(8, 8, 5\) \(a volume\?\)",
    ),
    BadFile(
        "3d-multiframe-dicom",
        "frames.dcm",
        lambda p: _multiframe_dicom(p, 3),
        r"multi-frame image \(NumberOfFrames=3\) is not supported",
    ),
    BadFile(
        "huge-png-decompression-bomb",
        "bomb.png",
        lambda p: p.write_bytes(png_declaring(100_000, 100_000)),
        "exceeds max_pixels",
    ),
    BadFile(
        "huge-png-over-max-pixels",
        "big.png",
        lambda p: p.write_bytes(png_declaring(9_000, 9_000)),
        r"image of 9000x9000 pixels \(from the file header\) exceeds max_pixels",
    ),
    BadFile(
        "huge-nifti-header",
        "bomb.nii.gz",
        lambda p: _nifti_declaring(p, 32767, 32767),
        r"image of 32767x32767 pixels \(from the NIfTI header\) exceeds max_pixels",
    ),
    BadFile(
        "huge-file-over-max-bytes",
        "huge.dcm",
        lambda p: _sparse(p, MAX_IMAGE_BYTES + 1),
        f"file of {MAX_IMAGE_BYTES + 1} bytes exceeds max_bytes",
    ),
    BadFile(
        "non-utf8-file-name",
        NON_UTF8,
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n broken"),
        "cannot be read as an image",
    ),
]
IDS = [case.id for case in CORPUS]


def build_corpus(folder: Path) -> dict[str, Path]:
    """Every bad file of the corpus in ``folder``: {case id: path}."""
    return {case.id: case.build(folder) for case in CORPUS}


def good_site(root: Path, n: int = 6) -> Path:
    """``root/<class>/<i>.png``: ``n`` good images per class."""
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        for i in range(n):
            write_png(root / cls / f"{i}.png", rng.integers(0, 255, (40, 36), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


# -- each file, read directly --------------------------------------------------------------
@pytest.mark.parametrize("case", CORPUS, ids=IDS)
def test_each_bad_file_is_refused_naming_file_and_reason(case: BadFile, corpus) -> None:
    path = corpus[case.id]
    with pytest.raises(BadFileError, match=case.reason) as info:
        ImageReader()(path)
    message = str(info.value)
    assert message.startswith(f"{os.fsencode(path.parent).decode()}/{case.shown}: ")
    message.encode("utf-8")  # printable and loggable, whatever the file's name


def test_a_good_image_with_a_non_utf8_name_is_read(tmp_path: Path) -> None:
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/good\xfe.png"))
    write_png(path, pattern())
    assert ImageReader()(path).shape == (1, 20, 30)


def test_huge_images_are_refused_without_decoding(corpus) -> None:
    """The size comes from the header: refusing takes milliseconds and no pixel buffer."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for case in ("huge-png-decompression-bomb", "huge-png-over-max-pixels", "huge-nifti-header"):
        with pytest.raises(BadFileError, match="exceeds max_pixels"):
            ImageReader()(corpus[case])
    assert time.perf_counter() - t0 < 5
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


# -- a site's folder: error stops naming the file, skip counts and loads the rest ----------
@pytest.mark.parametrize("case", CORPUS, ids=IDS)
def test_error_policy_stops_the_site_naming_the_file(case: BadFile, tmp_path: Path) -> None:
    root = good_site(tmp_path / "site")
    case.build(root / "pneumonia")
    source = ImageFolderSource(train=str(root), classes=CLASSES, resolution=16)
    with pytest.raises(BadFileError, match=case.reason) as info:
        source.load(preprocess=Resize(spatial_size=(16, 16)))
    assert case.shown in str(info.value)


def test_skip_policy_loads_the_good_images_and_lists_every_bad_one(tmp_path: Path) -> None:
    root = good_site(tmp_path / "site")
    build_corpus(root / "normal")
    write_png(root / "covid" / "c1.png", pattern())  # a class outside the list
    source = ImageFolderSource(
        train=str(root), classes=CLASSES, resolution=16, on_bad_file="skip", val_fraction=0.25
    )
    splits = source.load(preprocess=Resize(spatial_size=(16, 16)))
    report = splits.report
    assert report.n_skipped == len(CORPUS) + 1
    assert len(splits.train) + len(splits.val) == 12
    skipped = {Path(s["path"]).name: s["reason"] for s in report.skipped}
    for case in CORPUS:
        assert re.search(case.reason, skipped[case.shown]), case.id
    assert "not in the class list" in skipped["c1.png"]
    summary = report.summary()
    assert f"skipped {len(CORPUS) + 1} bad file(s)" in summary
    summary.encode("utf-8")
    assert report.to_dict()["n_skipped"] == len(CORPUS) + 1


def test_a_site_with_bad_files_loads_under_skip_through_load_site(tmp_path: Path) -> None:
    """The federation path: a deployed site (node config ``data-path``) whose folder holds
    the whole corpus besides its good images trains on the good ones and reports the rest."""
    from task.config import compose_config
    from task.data.sites import load_site

    root = good_site(tmp_path / "site")
    build_corpus(root / "pneumonia")
    overrides = ["experiment=fed_quick", "secure=none", "data=folder", "data.resolution=16"]
    node = {"site-name": "st-elsewhere", "data-path": str(root)}
    site = load_site(
        compose_config([*overrides, "data.train=unused", "data.on_bad_file=skip"]), node
    )
    assert site.name == "st-elsewhere"
    assert site.splits.report.n_skipped == len(CORPUS)
    assert len(site.splits.train) + len(site.splits.val) == 12
    assert site.splits.in_shape == (1, 16, 16)
    with pytest.raises(BadFileError, match="pneumonia/"):
        load_site(compose_config([*overrides, "data.train=unused", "data.on_bad_file=error"]), node)


# -- source-level cases: labels, empty folders, CSVs --------------------------------------
@pytest.fixture
def csv_site(tmp_path: Path) -> Path:
    write_png(tmp_path / "a.png", pattern())
    write_png(tmp_path / "b.png", pattern())
    csv_path = tmp_path / "train.csv"
    csv_path.write_bytes(
        b"path,label\na.png,normal\ngone.png,normal\nb.png,covid\nb.png,pneumonia\n"
        b"sub/missing\xff.png,normal\na.png\n"
    )
    return csv_path


def test_csv_rows_naming_missing_files_or_unknown_labels(csv_site: Path) -> None:
    with pytest.raises(BadFileError, match=r"gone\.png: file named on CSV line 3 does not exist"):
        read_csv(csv_site, CLASSES, LoadReport(), "error", "train")
    report = LoadReport()
    records = read_csv(csv_site, CLASSES, report, "skip", "train")
    assert [(r.path.name, r.label) for r in records] == [("a.png", 0), ("b.png", 1)]
    reasons = [s["reason"] for s in report.skipped]
    assert report.n_skipped == 4
    assert "does not exist" in reasons[0] and "label 'covid' (CSV line 4)" in reasons[1]
    assert report.skipped[2]["path"].endswith("missing\\xff.png")
    assert "line 7 has no path or no label" in reasons[3]


def test_a_csv_may_name_a_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/scan\xe9.png"))  # Latin-1 "é"
    write_png(path, pattern())
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbfpath,label\nscan\xe9.png,normal\n")
    records = read_csv(tmp_path / "train.csv", CLASSES, LoadReport(), "error", "train")
    assert [r.path for r in records] == [path]  # the BOM and the Latin-1 byte both handled


def test_label_outside_the_class_list_in_a_folder_site(tmp_path: Path) -> None:
    root = good_site(tmp_path / "site", n=2)
    write_png(root / "covid" / "1.png", pattern())
    write_png(root / "covid" / "2.png", pattern())
    with pytest.raises(BadFileError, match=r"class folder\(s\) \['covid'\] are not in"):
        scan_folder(root, CLASSES)
    report = LoadReport()
    records = scan_folder(root, CLASSES, "skip", report)
    assert len(records) == 4 and report.n_skipped == 2


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_an_empty_site_folder_is_refused_by_name_under_either_policy(tmp_path, policy) -> None:
    """Nothing to skip to: the site says which folder is empty (its client then answers
    with an error reply, which the strategy counts while the other sites go on)."""
    for cls in CLASSES:
        (tmp_path / "site" / cls).mkdir(parents=True)
    source = ImageFolderSource(train=str(tmp_path / "site"), classes=CLASSES, on_bad_file=policy)
    with pytest.raises(BadFileError, match=r"site: no image files .* in class folders"):
        source.load()
    bare = ImageFolderSource(train=str(tmp_path / "none"), classes=CLASSES, on_bad_file=policy)
    with pytest.raises(BadFileError, match=r"none: is not a folder"):
        bare.load()


def test_a_site_of_only_bad_files_is_refused_under_skip(tmp_path: Path) -> None:
    root = tmp_path / "site"
    build_corpus(root / "normal")
    (root / "pneumonia").mkdir()
    source = ImageFolderSource(train=str(root), classes=CLASSES, on_bad_file="skip")
    with pytest.raises(BadFileError, match="train: no usable images left in this split"):
        source.load()


def test_a_site_left_with_one_good_image_is_refused_under_skip(tmp_path: Path) -> None:
    """Regression: one usable image left after skipping reached scikit-learn's split,
    which failed with its own ValueError; the site now says what is wrong, and where."""
    root = tmp_path / "site"
    build_corpus(root / "normal")
    write_png(root / "pneumonia" / "only.png", pattern())
    source = ImageFolderSource(train=str(root), classes=CLASSES, on_bad_file="skip")
    with pytest.raises(BadFileError, match="site: 1 usable image: too few to split off"):
        source.load()
