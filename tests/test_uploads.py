"""Bounded uploads (``ss_stylegan.data.uploads``) on real files: size caps before anything is allocated, single-file
formats only, headers naming other files refused, temporary files always removed."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ss_stylegan.data import uploads
from ss_stylegan.data.readers import read_volume
from ss_stylegan.data.uploads import (
    UploadError,
    UploadLimits,
    UploadTooLargeError,
    inspect_upload,
    received_upload,
    upload_name,
    upload_suffix,
)

BIG = UploadLimits(max_bytes=64 << 20, max_unpacked_bytes=64 << 20, max_voxels=10**8)


def _nifti(path: Path, shape: tuple[int, ...] = (16, 16, 4), dtype: type = np.int16) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4)), str(path))
    return path


@pytest.mark.parametrize(
    ("name", "suffix"),
    [("scan.nii.gz", ".nii.gz"), ("SCAN.NII", ".nii"), ("x.nrrd", ".nrrd"), ("x.mha", ".mha"),
     ("x.png", ".png"), ("x.JPEG", ".jpeg"), (None, ".nii.gz"), ("dir\\sub/scan.jpg", ".jpg")],
)
def test_accepted_suffixes(name: str | None, suffix: str) -> None:
    assert upload_suffix(name) == suffix


@pytest.mark.parametrize(("name", "message"), [("x.nhdr", "separate file"), ("x.mhd", "separate file"),
                                               ("x.hdr", "separate file"), ("x.dcm", "unsupported upload type"),
                                               ("x.zip", "unsupported")])
def test_detached_and_unknown_formats_are_refused(name: str, message: str) -> None:
    with pytest.raises(UploadError, match=message):
        upload_suffix(name)


def test_upload_names_are_safe() -> None:
    assert upload_name("../../etc/scan 1.nii.gz", ".nii.gz") == "scan_1.nii.gz"
    assert upload_name(".hidden.nrrd", ".nrrd") == "hidden.nrrd"
    assert upload_name(None, ".nii.gz") == "upload.nii.gz"


def test_every_accepted_format_passes_and_reports_its_shape(tmp_path: Path) -> None:
    _nifti(tmp_path / "a.nii.gz", (16, 12, 5))
    _nifti(tmp_path / "b.nii", (8, 8, 3))
    nrrd.write(str(tmp_path / "c.nrrd"), np.zeros((6, 7, 2), np.int16))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 5, 4), np.int16)), str(tmp_path / "d.mha"), True)
    Image.fromarray(np.zeros((9, 11), np.uint8)).save(tmp_path / "e.png")
    Image.fromarray(np.zeros((9, 11), np.uint8)).save(tmp_path / "f.jpg")
    expected = {"a.nii.gz": (16, 12, 5), "b.nii": (8, 8, 3), "c.nrrd": (6, 7, 2), "d.mha": (4, 5, 3),
                "e.png": (9, 11), "f.jpg": (9, 11)}
    for name, shape in expected.items():
        assert inspect_upload(tmp_path / name, upload_suffix(name), BIG).shape == shape, name


def test_declared_voxels_are_refused_before_reading(tmp_path: Path) -> None:
    header = bytearray(gzip.decompress(_nifti(tmp_path / "s.nii.gz").read_bytes())[:352])
    header[42:48] = np.asarray([1024, 1024, 1024], "<i2").tobytes()  # dim[1..3]
    (tmp_path / "bomb.nii.gz").write_bytes(gzip.compress(bytes(header) + b"\0" * 64))
    with pytest.raises(UploadTooLargeError, match="1024 x 1024 x 1024 = 1073741824 voxels.*max_upload_voxels"):
        inspect_upload(tmp_path / "bomb.nii.gz", ".nii.gz", UploadLimits(max_voxels=512 * 512 * 1024))
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(UploadTooLargeError, match="300 x 400"):
        inspect_upload(tmp_path / "big.png", ".png", UploadLimits(max_voxels=100_000))


def test_unpacked_size_is_counted_without_keeping_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _nifti(tmp_path / "zeros.nii.gz", (256, 256, 64))  # 8 MB of int16 zeros, a few KB packed
    assert path.stat().st_size < 200_000
    with pytest.raises(UploadTooLargeError, match="unpacks to more than 4 MB.*max_upload_unpacked_mb"):
        inspect_upload(path, ".nii.gz", UploadLimits(max_unpacked_bytes=4 << 20))
    assert inspect_upload(path, ".nii.gz", UploadLimits(max_unpacked_bytes=9 << 20)).voxels == 256 * 256 * 64
    # a second gzip member after the first is counted too
    two = tmp_path / "two.nii.gz"
    two.write_bytes(path.read_bytes() + gzip.compress(b"\0" * (3 << 20)))
    with pytest.raises(UploadTooLargeError):
        inspect_upload(two, ".nii.gz", UploadLimits(max_unpacked_bytes=9 << 20))
    member = gzip.compress(b"\0" * (1 << 20))  # a member that ends exactly where a read ends
    monkeypatch.setattr(uploads, "CHUNK", len(member))
    (tmp_path / "aligned.gz").write_bytes(member + member)
    with open(tmp_path / "aligned.gz", "rb") as fh:
        assert uploads._count_unpacked(fh, uploads._gzip, BIG, "gzip") == 2 << 20
    monkeypatch.undo()
    nrrd.write(str(tmp_path / "z.nrrd"), np.zeros((256, 256, 64), np.int16), {"encoding": "gzip"})
    with pytest.raises(UploadTooLargeError):
        inspect_upload(tmp_path / "z.nrrd", ".nrrd", UploadLimits(max_unpacked_bytes=4 << 20))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 256, 256), np.int16)), str(tmp_path / "z.mha"), True)
    with pytest.raises(UploadTooLargeError):
        inspect_upload(tmp_path / "z.mha", ".mha", UploadLimits(max_unpacked_bytes=4 << 20))


def test_headers_that_name_another_file_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.raw"
    secret.write_bytes(np.arange(128, dtype=np.int16).tobytes())
    mha = tmp_path / "names.mha"
    mha.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = 8 8 2\nElementType = MET_SHORT\n"
                   f"ElementDataFile = {secret}\n", encoding="latin-1")
    assert read_volume(mha).data.shape == (8, 8, 2)  # a reader would really follow it
    with pytest.raises(UploadError, match="names a separate data file"):
        inspect_upload(mha, ".mha", BIG)
    nrrd_file = tmp_path / "names.nrrd"
    nrrd_file.write_text(f"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 2\nencoding: raw\ndata file: {secret}\n\n",
                         encoding="latin-1")
    with pytest.raises(UploadError, match="data file"):
        inspect_upload(nrrd_file, ".nrrd", BIG)
    pair = bytearray(gzip.decompress(_nifti(tmp_path / "p.nii.gz").read_bytes())[:352])
    pair[344:348] = b"ni1\0"  # a NIfTI header whose voxels are in a .img file
    (tmp_path / "pair.nii").write_bytes(bytes(pair))
    with pytest.raises(UploadError, match="separate .img file"):
        inspect_upload(tmp_path / "pair.nii", ".nii", BIG)


@pytest.mark.parametrize(("suffix", "content", "message"), [
    (".nii.gz", b"not gzip at all", "gzip"),
    (".nii", b"\0" * 400, "no NIfTI header"),
    (".nrrd", b"PNG?", "NRRD header"),
    (".mha", b"hello = world\nElementDataFile = LOCAL\n", "not a MetaImage"),
    (".png", b"GIF89a....", "not a PNG"),
    (".jpg", b"\x89PNG", "not a JPEG"),
])
def test_wrong_content_for_the_suffix_is_refused(tmp_path: Path, suffix: str, content: bytes, message: str) -> None:
    path = tmp_path / f"x{suffix}"
    path.write_bytes(content)
    with pytest.raises(UploadError, match=message):
        inspect_upload(path, suffix, BIG)


def test_received_upload_caps_bytes_and_always_removes_its_folder(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    data = _nifti(tmp_path / "ok.nii.gz").read_bytes()
    with received_upload(io.BytesIO(data), "../ok.nii.gz", BIG, folder=temp) as (path, info):
        assert path.name == "ok.nii.gz" and path.read_bytes() == data and info.voxels == 16 * 16 * 4
    assert list(temp.iterdir()) == []
    with pytest.raises(UploadTooLargeError, match="larger than 0 MB"):
        with received_upload(io.BytesIO(b"x" * 5000), "big.nii.gz", UploadLimits(max_bytes=4096), folder=temp):
            pass
    with pytest.raises(UploadError):
        with received_upload(io.BytesIO(b"junk"), "junk.nii.gz", BIG, folder=temp):
            pass
    with pytest.raises(RuntimeError):
        with received_upload(io.BytesIO(data), "ok.nii.gz", BIG, folder=temp):
            raise RuntimeError("the caller failed")
    assert list(temp.iterdir()) == []
