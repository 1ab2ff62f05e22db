"""Fuzzing the image readers and the CSV source: every file, however mangled, either reads
as one finite ``(1, H, W)`` float32 image or is refused with :class:`BadFileError` naming
it. Mutations start from real files of each format (truncated, bytes flipped, a 32-bit
field overwritten with a large number, as a wrong size in a header would be), plus random
bytes under each suffix."""

from __future__ import annotations

import gzip
import os
import resource
import struct
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from task.data.errors import BadFileError, LoadReport
from task.data.files import ImageReader
from task.data.listing import read_csv
from tests.factories import pattern, write_dicom, write_jpeg, write_nifti, write_png

CLASSES = ["normal", "pneumonia"]
SUFFIXES = (".png", ".jpg", ".dcm", ".nii", ".nii.gz")
_DIR = tempfile.TemporaryDirectory(prefix="fuzz-readers-")
WORK = Path(_DIR.name)


@cache
def _seeds() -> dict[str, bytes]:
    """One small valid file per suffix (NIfTI uncompressed: ``.nii.gz`` is gzipped after
    mutation, so that mutations reach the header rather than the gzip checksum)."""
    folder = WORK / "seeds"
    paths = {
        ".png": write_png(folder / "s.png", pattern(6, 5)),
        ".jpg": write_jpeg(folder / "s.jpg", pattern(6, 5)),
        ".dcm": write_dicom(folder / "s.dcm", pattern(6, 5, dtype=np.uint16, high=4000)),
        ".nii": write_nifti(folder / "s.nii", pattern(6, 5).astype(np.float32)),
    }
    return {suffix: path.read_bytes() for suffix, path in paths.items()}


@st.composite
def mangled_files(draw) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from(SUFFIXES))
    seed = _seeds()[".nii" if suffix == ".nii.gz" else suffix]
    how = draw(st.sampled_from(("random", "truncate", "flip", "int32", "int16")))
    if how == "random":
        data = draw(st.binary(max_size=300))
    else:
        data = bytearray(seed)
        # Half of the changes land in the first 400 bytes, where the headers are.
        end = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 400)
        at = draw(st.integers(0, end))
        if how == "truncate":
            del data[at:]
        elif how == "flip":
            data[at] ^= draw(st.integers(1, 255))
        else:
            fmt = "<I" if how == "int32" else "<H"
            big = draw(st.sampled_from((0, 1, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1)))
            big = min(big, 2 ** (8 * struct.calcsize(fmt)) - 1)
            data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, big)
            if draw(st.booleans()):  # PNG, DICOM and NIfTI-2 write sizes big-endian too
                data[at : at + struct.calcsize(fmt)] = data[at : at + struct.calcsize(fmt)][::-1]
        data = bytes(data)
    if suffix == ".nii.gz":
        data = gzip.compress(data, mtime=0)
    return suffix, data


READER = ImageReader(channels=1, max_pixels=1_000_000)


def _peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _check(path: Path) -> None:
    # The baseline is this process's peak just before the read, not at import: the peak only
    # rises, and tests that ran earlier in the same process (training, simulations) raise it.
    base = _peak_rss_kb()
    try:
        image = READER(path)
    except BadFileError as err:
        assert path.name in str(err) and err.reason
        return
    finally:  # no mangled header may make a reader allocate what it declares
        grown = (_peak_rss_kb() - base) / 1024
        assert grown < 1024, f"peak memory grew by {grown:.0f} MB reading {path.name}"
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[0] == 1
    assert np.isfinite(image).all()


@given(mangled_files())
@example((".png", bytes.fromhex("89504e470d0a1a0a0000000d49484452000186a0000186a00800000000")))
@example((".dcm", b"\0" * 128 + b"DICM"))
@example((".nii", b"\x5c\x01\0\0" + b"\0" * 344))
def test_mangled_image_files_read_or_are_refused_by_name(case: tuple[str, bytes]) -> None:
    suffix, data = case
    path = WORK / f"case{suffix}"
    path.write_bytes(data)
    _check(path)


def test_nifti_header_declaring_a_huge_image_is_refused_before_reading() -> None:
    """A NIfTI header may declare 2^15 x 2^15 x ... voxels over a few bytes of data: the
    reader refuses from the header, before nibabel allocates a buffer of that size."""
    header = bytearray(_seeds()[".nii"][:352])
    struct.pack_into("<8h", header, 40, 3, 32767, 32767, 32767, 1, 1, 1, 1)
    path = WORK / "huge-header.nii.gz"
    path.write_bytes(gzip.compress(bytes(header)))
    with pytest.raises(BadFileError, match=r"huge-header\.nii\.gz: .*(exceeds|volume)"):
        READER(path)


@st.composite
def csv_texts(draw) -> bytes:
    names = st.sampled_from(["ok.png", "gone.png", "", "../ok.png", "sub/ok.png", "ok.png\0"])
    labels = st.sampled_from(["normal", "pneumonia", "covid", "", "Normal"])
    header = draw(st.sampled_from(["path,label", "label,path", "path", "file,label", ""]))
    rows = draw(
        st.lists(
            st.tuples(names, labels, st.sampled_from(["", ",extra", ',"unclosed'])),
            max_size=5,
        )
    )
    text = "\n".join([header, *(f"{n},{lab}{tail}" for n, lab, tail in rows)]).encode()
    if draw(st.booleans()):
        text = draw(st.binary(max_size=4)) + text + draw(st.binary(max_size=4))
    return text


@given(csv_texts(), st.sampled_from(["error", "skip"]))
@example(b"path,label\nok.png\n", "skip")
@example(b"path,label\n\xff.png,normal\n", "error")
@example(b"path,label\nok.png,normal,extra\n", "skip")
@example(b"label,path\nnormal\n", "error")  # was TypeError (a row without its path)
@example(b"path,label\x80", "skip")  # was UnicodeDecodeError
@example(b'path,label\n"' + b"a" * 200_000 + b'",normal\n', "skip")  # was csv.Error
@example(b"\xef\xbb\xbfpath,label\nok.png,normal\n", "error")  # a spreadsheet's BOM
def test_csv_files_read_or_are_refused_by_name(text: bytes, policy: str) -> None:
    folder = WORK / "csv"
    if not (folder / "ok.png").exists():
        write_png(folder / "ok.png", pattern())
    path = folder / "train.csv"
    path.write_bytes(text)
    report = LoadReport()
    try:
        records = read_csv(path, CLASSES, report, policy, "train")
    except BadFileError as err:
        assert err.reason
        return
    assert all(r.path.is_file() and r.label in (0, 1) for r in records)
    assert policy == "skip" or report.n_skipped == 0


@given(st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b))
@example(b"\x80")  # was a message holding a lone surrogate: UnicodeEncodeError when printed
def test_any_file_name_is_named_printably(stem: bytes) -> None:
    """Any bytes a Linux file name may hold: the error names the file in text that can be
    printed and written as UTF-8 (bytes that are not UTF-8 shown as ``\\xff``)."""
    if stem in (b".", b".."):
        return
    path = Path(os.fsdecode(bytes(WORK) + b"/" + stem + b".png"))
    path.write_bytes(b"not a png")
    try:
        with pytest.raises(BadFileError) as info:
            READER(path)
    finally:
        path.unlink()
    str(info.value).encode("utf-8")  # never a lone surrogate
    assert stem.decode("utf-8", "backslashreplace") in str(info.value)
