"""SliceCache on real folders of studies: discovery, identity, reuse, invalidation, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.cache import (
    SliceCache,
    SliceCacheError,
    Study,
    find_studies,
    read_study_slices,
)
from ss_stylegan.data.synthetic import make_synthetic_datastore

CFG = SliceConfig(resolution=32)


@pytest.fixture()
def datastore(tmp_path: Path) -> Path:
    folder = tmp_path / "studies"
    make_synthetic_datastore(folder, n_studies=3, n_slices=6, size=32, random_state=3)
    return folder


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_find_studies_ignores_non_studies(datastore: Path) -> None:
    (datastore / "notes.txt").write_text("not an image", encoding="utf-8")
    (datastore / "datastore_v2.json").write_text("{}", encoding="utf-8")
    (datastore / "labels" / "final").mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), str(datastore / "labels" / "final" / "x.nii.gz"))
    (datastore / ".ss_stylegan").mkdir()
    (datastore / "empty_folder").mkdir()
    dicom = datastore / "ct_series"
    dicom.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4), np.int16)), str(dicom / "IM0001.dcm"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(datastore / "xray.png")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), str(datastore / "plain.nii"))
    studies = find_studies(datastore)
    assert [s.image_id for s in studies] == ["ct_series", "plain", "study_00", "study_01", "study_02", "xray"]
    assert studies[0].path == dicom and studies[2].path.name == "study_00.nii.gz"
    assert find_studies(datastore) == studies  # deterministic
    with pytest.raises(NotADirectoryError, match="missing"):
        find_studies(datastore / "missing")


def test_build_gives_every_slice_with_identity(datastore: Path, tmp_path: Path) -> None:
    cache = SliceCache.build(find_studies(datastore), CFG, tmp_path / "cache")
    assert len(cache) == 18 and cache.n_read == 3 and cache.n_reused == 0 and cache.errors == []
    assert isinstance(cache.images, np.memmap) and cache.images.shape == (18, 32, 32)
    assert cache.images.dtype == np.uint8
    assert cache.refs()[:2] == [("study_00", 0), ("study_00", 1)]
    assert cache.slices.dtype == np.int64 and cache.positions.shape == (18, 3)
    row = cache.index_of("study_01", 4)
    assert cache.image_ids[row] == "study_01" and cache.slices[row] == 4
    assert cache.slices_of("study_02").tolist() == list(range(12, 18))
    assert cache.slices_of("nope").tolist() == []
    with pytest.raises(KeyError, match="study_01"):
        cache.index_of("study_01", 99)
    # slice k of a study sits at z = (k - 2.5) * 5 mm (synthetic volumes are centred, 5 mm slices)
    np.testing.assert_allclose(cache.positions[cache.slices_of("study_00"), 2], (np.arange(6) - 2.5) * 5.0, atol=1e-4)
    single = read_study_slices(datastore / "study_01.nii.gz", CFG)
    np.testing.assert_array_equal(cache.images[cache.slices_of("study_01")], single.images)
    assert [s.image_id for s in cache.studies] == ["study_00", "study_01", "study_02"]
    assert cache.studies[0].n_slices == 6 and cache.studies[0].kept.tolist() == list(range(6))
    reopened = SliceCache.open(tmp_path / "cache")
    np.testing.assert_array_equal(reopened.images, cache.images)
    assert reopened.refs() == cache.refs() and reopened.slice_cfg == CFG


def test_second_build_reuses_and_changed_file_is_reread(datastore: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = SliceCache.build(find_studies(datastore), CFG, cache_dir)
    entries = {p: p.stat().st_mtime_ns for p in (cache_dir / "studies").glob("*.npy")}
    second = SliceCache.build(find_studies(datastore), CFG, cache_dir)
    assert (second.n_read, second.n_reused) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in (cache_dir / "studies").glob("*.npy")} == entries
    np.testing.assert_array_equal(second.images, first.images)

    # overwrite study_01 with different content: only it is re-read
    before = np.array(first.images[first.slices_of("study_00")])
    make_synthetic_datastore(tmp_path / "other", n_studies=2, n_slices=6, size=32, random_state=99)
    (datastore / "study_01.nii.gz").write_bytes((tmp_path / "other" / "study_01.nii.gz").read_bytes())
    _touch_later(datastore / "study_01.nii.gz")
    third = SliceCache.build(find_studies(datastore), CFG, cache_dir)
    assert (third.n_read, third.n_reused) == (1, 2)
    np.testing.assert_array_equal(third.images[third.slices_of("study_00")], before)
    fresh = read_study_slices(datastore / "study_01.nii.gz", CFG)
    np.testing.assert_array_equal(third.images[third.slices_of("study_01")], fresh.images)
    assert len(list((cache_dir / "studies").glob("*.npy"))) == 3  # the stale entry is gone

    # adding a study reads only that one; a new setting re-reads everything
    make_synthetic_datastore(tmp_path / "more", n_studies=1, n_slices=4, size=32, random_state=5, prefix="added")
    (datastore / "added_00.nii.gz").write_bytes((tmp_path / "more" / "added_00.nii.gz").read_bytes())
    fourth = SliceCache.build(find_studies(datastore), CFG, cache_dir)
    assert (fourth.n_read, fourth.n_reused, len(fourth)) == (1, 3, 22)
    lung = SliceCache.build(find_studies(datastore), CFG.replace(window="lung"), cache_dir)
    assert lung.n_read == 4


def test_corrupt_and_fake_files_are_errors_while_others_are_used(datastore: Path, tmp_path: Path) -> None:
    raw = (datastore / "study_00.nii.gz").read_bytes()
    (datastore / "broken.nii.gz").write_bytes(raw[: len(raw) // 3])
    (datastore / "fake.png").write_text("this is text, not a picture", encoding="utf-8")
    cache = SliceCache.build(find_studies(datastore), CFG, tmp_path / "cache")
    assert sorted(e.image_id for e in cache.errors) == ["broken", "fake"]
    messages = {e.image_id: e.message for e in cache.errors}
    assert "broken.nii.gz" in messages["broken"] and "fake.png" in messages["fake"]
    assert len(cache) == 18 and set(cache.image_ids) == {"study_00", "study_01", "study_02"}
    assert [e.image_id for e in SliceCache.open(tmp_path / "cache").errors] == ["broken", "fake"]
    # fixing the file makes it a study again
    (datastore / "broken.nii.gz").write_bytes(raw)
    _touch_later(datastore / "broken.nii.gz")
    fixed = SliceCache.build(find_studies(datastore), CFG, tmp_path / "cache")
    assert [e.image_id for e in fixed.errors] == ["fake"] and len(fixed) == 24 and fixed.n_read == 1


def test_empty_inputs(tmp_path: Path) -> None:
    cache = SliceCache.build([], CFG, tmp_path / "cache")
    assert len(cache) == 0 and cache.images.shape == (0, 32, 32) and cache.refs() == []
    missing = SliceCache.build([Study("gone", tmp_path / "gone.nii.gz")], CFG, tmp_path / "cache")
    assert len(missing) == 0 and "gone.nii.gz" in missing.errors[0].message
    nib.save(nib.Nifti1Image(np.full((8, 8, 3), 5, np.int16), np.eye(4)), str(tmp_path / "blank.nii.gz"))
    for _ in range(2):  # built, then reused: a study whose every slice is skipped is kept as a summary
        blank = SliceCache.build(find_studies(tmp_path), CFG, tmp_path / "cache")
        assert len(blank) == 0 and blank.errors == []
        assert blank.studies[0].image_id == "blank" and blank.studies[0].n_slices == 3
        assert blank.studies[0].kept.tolist() == []
    with pytest.raises(SliceCacheError, match="no slice cache"):
        SliceCache.open(tmp_path / "nothing")
