"""The studies of a folder (``labelling/studies.py``) and their fingerprints (``data/fingerprint.py``), on real files:
what is a study, what is ignored, when the folder is listed again, and which changes of a study's files show."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from dicom_series import write_dicom_series

from ss_stylegan.data.fingerprint import (
    FingerprintCache,
    content_hash,
    stamp,
    study_files,
)
from ss_stylegan.data.synthetic import make_synthetic_datastore
from ss_stylegan.labelling.studies import StudyIndex


def _folder(tmp_path: Path) -> Path:
    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=2, n_slices=6, size=16, random_state=0)
    return studies


def test_files_and_dicom_folders_are_studies_and_other_files_are_named_as_ignored(tmp_path: Path) -> None:
    studies = _folder(tmp_path)
    write_dicom_series(studies / "series1", np.zeros((4, 16, 16), dtype=np.int16))
    (studies / "notes.txt").write_text("not an image")
    (studies / "labels").mkdir()                       # MONAI Label's own folder
    (studies / "datastore_v2.json").write_text("{}")  # and its state file
    index = StudyIndex(studies)
    ids = [s.image_id for s in index.studies()]
    assert ids == sorted(ids) and set(ids) == {"study_00", "study_01", "series1"}
    assert index.study("series1").path == studies / "series1"
    assert index.study("nope") is None
    assert "notes.txt" in index.ignored_files() and "datastore_v2.json" not in index.ignored_files()


def test_the_listing_changes_when_studies_do_and_its_objects_stay_while_they_do_not(tmp_path: Path) -> None:
    studies = _folder(tmp_path)
    index = StudyIndex(studies)
    first = index.by_id()
    assert index.by_id() is first                      # callers key caches on the object
    (studies / "datastore_v2.json").write_text('{"rewritten": true}')   # MONAI Label rewrites its state
    assert index.by_id() is first
    shutil.copy(studies / "study_00.nii.gz", studies / "study_new.nii.gz")
    assert "study_new" in index.by_id()                # a new entry is listed at once
    (studies / "study_01.nii.gz").unlink()
    assert "study_01" not in index.by_id() and index.study("study_01") is None


def test_a_rewritten_data_file_of_a_detached_header_changes_the_fingerprint(tmp_path: Path) -> None:
    """A ``.nhdr`` study is read from its header and its ``.raw``: rewriting only the ``.raw`` (new voxels,
    same size) changes its stamp and content hash, so the live map and the label flags see it."""
    image = sitk.GetImageFromArray(np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8))
    header = tmp_path / "scan.nhdr"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(header))
    writer.UseCompressionOff()
    writer.Execute(image)
    files = study_files(header)
    assert files[0] == header and len(files) == 2 and files[1].suffix == ".raw"
    cache = FingerprintCache()
    before_stamp, before = stamp(header), cache.fingerprint(header)
    raw = files[1]
    data = bytearray(raw.read_bytes())
    data[0] ^= 0xFF
    raw.write_bytes(bytes(data))
    os.utime(header, ns=(header.stat().st_atime_ns, header.stat().st_mtime_ns))   # the header is untouched
    assert stamp(header) != before_stamp
    after = cache.fingerprint(header)
    assert after is not None and before is not None and after.sha256 != before.sha256
    assert content_hash(header) == after.sha256


def test_a_touched_study_keeps_its_content_hash(tmp_path: Path) -> None:
    studies = _folder(tmp_path)
    path = studies / "study_00.nii.gz"
    cache = FingerprintCache()
    before = cache.fingerprint(path)
    os.utime(path)                                      # a touch: new times, same bytes
    after = cache.fingerprint(path)
    assert before is not None and after is not None
    assert after.stamp != before.stamp and after.sha256 == before.sha256
