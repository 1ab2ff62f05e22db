"""Site images: formats, bit depths, orientation, MONOCHROME1, RGB, and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from task.data.content import image_digest
from task.data.errors import BadFileError, LoadReport
from task.data.files import ImageReader, load_records
from task.data.folder import ImageFolderSource
from task.data.listing import Record, read_csv, scan_folder
from tests.factories import pattern, write_dicom, write_jpeg, write_nifti, write_png

CLASSES = ["normal", "pneumonia"]


@pytest.fixture(scope="module")
def reader() -> ImageReader:
    return ImageReader(channels=1)


def test_png_8bit_keeps_row_major_orientation(tmp_path: Path, reader: ImageReader) -> None:
    img = pattern()
    out = reader(write_png(tmp_path / "a.png", img))
    assert out.shape == (1, 20, 30)
    np.testing.assert_array_equal(out[0], img.astype(np.float32))


def test_png_16bit_keeps_full_depth(tmp_path: Path, reader: ImageReader) -> None:
    img = pattern(dtype=np.uint16, high=60000)
    out = reader(write_png(tmp_path / "a16.png", img))
    assert out.max() == 60000
    np.testing.assert_array_equal(out[0], img.astype(np.float32))


def test_rgb_becomes_luma_grayscale(tmp_path: Path, reader: ImageReader) -> None:
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    out = reader(write_png(tmp_path / "rgb.png", rgb))
    assert out.shape == (1, 8, 9)
    np.testing.assert_allclose(out, 0.299 * 100 + 0.587 * 200 + 0.114 * 50, rtol=1e-5)


def test_gray_repeated_for_three_channel_models(tmp_path: Path) -> None:
    out = ImageReader(channels=3)(write_png(tmp_path / "g.png", pattern()))
    assert out.shape == (3, 20, 30)


def test_jpeg_reads_same_orientation(tmp_path: Path, reader: ImageReader) -> None:
    img = pattern()
    out = reader(write_jpeg(tmp_path / "a.jpg", img))
    assert out.shape == (1, 20, 30)
    assert np.unravel_index(out[0].argmax(), out[0].shape) == (2, 25)


def test_dicom_monochrome2_and_orientation(tmp_path: Path, reader: ImageReader) -> None:
    img = pattern(dtype=np.uint16, high=4000)
    out = reader(write_dicom(tmp_path / "a.dcm", img))
    np.testing.assert_array_equal(out[0], img.astype(np.float32))


def test_dicom_monochrome1_is_inverted(tmp_path: Path, reader: ImageReader) -> None:
    img = pattern(dtype=np.uint16, high=4000)
    out = reader(write_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1"))
    expected = img.max() + img.min() - img.astype(np.float32)
    np.testing.assert_array_equal(out[0], expected)
    assert out[0, 2, 25] == img.min()  # the brightest stored value is now the darkest


def test_nifti_2d_and_singleton_slice(tmp_path: Path, reader: ImageReader) -> None:
    img = pattern().astype(np.float32)
    np.testing.assert_array_equal(reader(write_nifti(tmp_path / "a.nii.gz", img))[0], img)
    out = reader(write_nifti(tmp_path / "b.nii.gz", img[..., None]))
    assert out.shape == (1, 20, 30)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("bad.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10), "cannot be read"),
        ("text.png", lambda p: p.write_text("not an image at all"), "cannot be read"),
        ("vol.nii.gz", lambda p: write_nifti(p, np.zeros((8, 8, 5))), "expected a 2-D image"),
        ("nan.nii.gz", lambda p: write_nifti(p, np.full((8, 8), np.nan)), "NaN or infinite"),
    ],
    ids=["truncated-header-png", "text-as-png", "3d-volume", "nan-pixels"],
)
def test_bad_files_name_file_and_reason(tmp_path: Path, reader, name, make, reason) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(BadFileError, match=reason) as info:
        reader(path)
    assert str(path) in str(info.value)


def test_truncated_png_of_real_image(tmp_path: Path, reader: ImageReader) -> None:
    good = write_png(tmp_path / "good.png", pattern(200, 200))
    bad = tmp_path / "trunc.png"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(BadFileError, match=r"trunc\.png"):
        reader(bad)


def test_dicom_without_pixel_data(tmp_path: Path, reader: ImageReader) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", pattern(dtype=np.uint16), pixels=False)
    with pytest.raises(BadFileError, match="no pixel data"):
        reader(path)


def test_scan_folder_refuses_unknown_class_and_empty(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "normal" / "1.png", pattern())
    write_png(tmp_path / "a" / "covid" / "1.png", pattern())
    with pytest.raises(BadFileError, match="covid"):
        scan_folder(tmp_path / "a", CLASSES)
    (tmp_path / "empty" / "normal").mkdir(parents=True)
    with pytest.raises(BadFileError, match="no image files"):
        scan_folder(tmp_path / "empty", CLASSES)


def test_scan_folder_lists_files_in_name_order_across_classes(tmp_path: Path) -> None:
    """An exported site (files named by their data-set index) is read in the order of
    its simulated twin, not class by class: a deployment then draws the same batches."""
    for name, cls in (("00003.png", "normal"), ("00001.png", "pneumonia"), ("00002.png", "normal")):
        write_png(tmp_path / "site" / cls / name, pattern())
    records = scan_folder(tmp_path / "site", CLASSES)
    assert [(r.path.name, r.label) for r in records] == [
        ("00001.png", CLASSES.index("pneumonia")),
        ("00002.png", CLASSES.index("normal")),
        ("00003.png", CLASSES.index("normal")),
    ]


def test_csv_missing_file_and_bad_label(tmp_path: Path) -> None:
    write_png(tmp_path / "ok.png", pattern())
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("path,label\nok.png,normal\ngone.png,normal\nok.png,covid\n")
    with pytest.raises(BadFileError, match=r"gone\.png"):
        read_csv(csv_path, CLASSES, LoadReport(), "error", "train")
    report = LoadReport()
    records = read_csv(csv_path, CLASSES, report, "skip", "train")
    assert [r.path.name for r in records] == ["ok.png"]
    assert report.n_skipped == 2
    assert {s["reason"].split(" ")[0] for s in report.skipped} == {"file", "label"}


def _site(tmp_path: Path, n: int = 6) -> Path:
    root = tmp_path / "site"
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        for i in range(n):
            write_png(root / cls / f"{i}.png", rng.integers(0, 255, (40, 36), dtype=np.uint8))
    return root


def test_folder_source_error_policy_stops_on_bad_file(tmp_path: Path) -> None:
    root = _site(tmp_path)
    (root / "normal" / "broken.png").write_bytes(b"garbage")
    source = ImageFolderSource(train=str(root), classes=CLASSES, resolution=16)
    with pytest.raises(BadFileError, match=r"broken\.png"):
        source.load()


def test_folder_source_skip_policy_counts_and_reports(tmp_path: Path) -> None:
    root = _site(tmp_path)
    (root / "normal" / "broken.png").write_bytes(b"garbage")
    write_nifti(root / "pneumonia" / "vol.nii.gz", np.zeros((8, 8, 4)))
    from monai.transforms import Resize

    source = ImageFolderSource(
        train=str(root), classes=CLASSES, resolution=16, on_bad_file="skip", val_fraction=0.25
    )
    splits = source.load(preprocess=Resize(spatial_size=(16, 16)))
    assert splits.report.n_skipped == 2
    assert {Path(s["path"]).name for s in splits.report.skipped} == {"broken.png", "vol.nii.gz"}
    assert len(splits.train) + len(splits.val) == 12
    assert splits.train.images.shape[1:] == (1, 16, 16)
    assert "broken.png" in splits.report.summary()
    assert len(splits.test) == 0


def test_load_records_keeps_paths_and_digests_of_the_files_it_kept(tmp_path: Path) -> None:
    """Under ``skip`` a bad file in the middle drops out of every list alike, so that each
    kept image keeps its own path, label and content digest."""
    good = [write_png(tmp_path / f"{i}.png", pattern(high=100 + i)) for i in range(3)]
    (tmp_path / "bad.png").write_bytes(b"garbage")
    records = [
        Record(good[0], 0),
        Record(tmp_path / "bad.png", 1),
        Record(good[1], 1),
        Record(good[2], 0),
    ]
    report = LoadReport()
    kept = load_records(records, ImageReader(), None, "skip", report, "test")
    assert kept.paths == good
    assert kept.labels.tolist() == [0, 1, 0]
    reader = ImageReader()
    assert kept.digests == [image_digest(reader(p)) for p in good]
    assert len(set(kept.digests)) == 3
    assert report.n_skipped == 1 and report.loaded == {"test": 3}


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ignore"):
        ImageFolderSource(train=str(tmp_path), classes=CLASSES, on_bad_file="ignore")


def test_building_the_reader_says_nothing_of_plugins_it_does_not_use(caplog, recwarn):
    """MONAI builds its GPU-only nvImageCodec DICOM reader inside every LoadImage; on a
    machine without it that reader warns and logs, once per loader, about a plugin this
    project never uses."""
    import logging

    from task.data.files import NVIMGCODEC_LOGGER, ImageReader

    logging.getLogger(NVIMGCODEC_LOGGER).setLevel(logging.NOTSET)  # as on first import
    with caplog.at_level(logging.WARNING):
        ImageReader()
    assert not [r for r in caplog.records if "nvImageCodec" in r.getMessage()]
    assert not [w for w in recwarn if "nvImageCodec" in str(w.message)]
