"""Slices as the browser client shows them (:mod:`ss_stylegan.labelling.viewer`), from real files on disk.

A marker voxel put at the patient's right-anterior corner of a NIfTI volume must be drawn at the top left
(radiological display), whatever the file's own axis order; windows are the named CT windows or ``C:W``;
a rewritten study is read again; thumbnails from the slice cache equal the model's input.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.cache import SliceCache, Study, cached_study_slices, find_studies
from ss_stylegan.data.preprocess import model_ready_slice
from ss_stylegan.data.readers import read_volume
from ss_stylegan.labelling.label_values import SliceOutOfRangeError, UnreadableImageError
from ss_stylegan.labelling.validation import FieldError
from ss_stylegan.labelling.viewer import MAX_SIDE, SliceViewer, parse_window


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _marked_volume(path: Path, affine: np.ndarray, shape: tuple[int, int, int] = (20, 30, 6)) -> Path:
    """A -1000 HU volume with one +1000 HU voxel at the right-anterior corner of every slice (in world terms)."""
    world_ras = np.full(shape, -1000, np.int16)
    world_ras[-1, -1, :] = 1000  # x = right-most, y = anterior-most (an identity affine is RAS)
    img = nib.Nifti1Image(world_ras, np.eye(4))
    ornt = nib.orientations.io_orientation(affine)  # store it in the axis order ``affine`` says
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(np.eye(4)), ornt)
    data = nib.orientations.apply_orientation(world_ras, transform)
    img = nib.Nifti1Image(data, img.affine @ nib.orientations.inv_ornt_aff(transform, world_ras.shape))
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("stored", ["RAS", "LPS"])
def test_the_patient_right_anterior_corner_is_drawn_top_left(tmp_path: Path, stored: str) -> None:
    affine = np.eye(4) if stored == "RAS" else np.diag([-1.0, -1.0, 1.0, 1.0])
    path = _marked_volume(tmp_path / f"ct_{stored}.nii.gz", affine)
    view = SliceViewer().view(Study("ct", path), 2, window="-0:2000")
    image = _png(view.png)
    assert image.shape == (30, 20)  # rows: anterior..posterior (Y), columns: right..left (X), native size
    assert image[0, 0] == 255 and image.sum() == 255 + (image.size - 1) * image[5, 5]
    assert view.n_slices == 6 and view.window == (-1000.0, 1000.0)


def test_named_and_typed_windows_and_their_errors() -> None:
    assert parse_window(None) == "auto" and parse_window("lung") == "lung"
    assert parse_window("-600:1500") == (-1350.0, 150.0)
    for bad, words in (("lungs", "must be one of"), ("40:0", "width must be positive"), ("1:2:3", "centre:width"),
                       ("../etc", "must be one of")):
        with pytest.raises(FieldError, match=words):
            parse_window(bad)


def test_size_limits_and_a_slice_outside_the_study(tmp_path: Path) -> None:
    path = _marked_volume(tmp_path / "ct.nii.gz", np.eye(4))
    viewer = SliceViewer()
    big = viewer.view(Study("ct", path), 0, size=300)
    assert (big.width, big.height) == (200, 300)
    with pytest.raises(FieldError, match=f"between 16 and {MAX_SIDE}"):
        viewer.view(Study("ct", path), 0, size=MAX_SIDE + 1)
    with pytest.raises(SliceOutOfRangeError, match="slices 0..5"):
        viewer.view(Study("ct", path), 6)
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(UnreadableImageError):
        viewer.view(Study("broken", tmp_path / "broken.nii.gz"), 0)


def test_a_rewritten_study_is_read_again_and_old_volumes_are_let_go(tmp_path: Path) -> None:
    path = _marked_volume(tmp_path / "ct.nii.gz", np.eye(4))
    viewer = SliceViewer(max_volumes=2)
    before = _png(viewer.view(Study("ct", path), 0, window="0:2000").png)
    data = np.full((20, 30, 6), 1000, np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    os.utime(path, ns=(1, 1))  # even with an old mtime: the stamp has the size and inode too
    after = _png(viewer.view(Study("ct", path), 0, window="0:2000").png)
    assert before[5, 5] == 0 and after[5, 5] == 255
    for i in range(3):
        _marked_volume(tmp_path / f"other{i}.nii.gz", np.eye(4))
        viewer.view(Study(f"other{i}", tmp_path / f"other{i}.nii.gz"), 0)
    assert len(viewer._volumes) == 2


def test_a_picture_study_is_shown_as_the_file_shows_it(tmp_path: Path) -> None:
    picture = np.zeros((40, 60), np.uint8)
    picture[0, 0] = 200
    Image.fromarray(picture).save(tmp_path / "scan.png")
    image = _png(SliceViewer().view(Study("scan", tmp_path / "scan.png"), 0).png)
    assert image.shape == (40, 60) and image[0, 0] == 200


def test_thumbnails_come_from_the_slice_cache_and_equal_the_model_input(tmp_path: Path) -> None:
    from ss_stylegan.data.synthetic import make_synthetic_datastore

    studies = tmp_path / "studies"
    make_synthetic_datastore(studies, n_studies=1, n_slices=8, size=32, random_state=0)
    cfg = SliceConfig(resolution=32)
    (study,) = find_studies(studies)
    viewer = SliceViewer()
    made = _png(viewer.thumbnail(study, 3, cfg, tmp_path / "cache", size=32))  # no cache yet: from the volume
    assert cached_study_slices(study.path, cfg, tmp_path / "cache") is None
    SliceCache.build([study], cfg, tmp_path / "cache")
    images, kept = cached_study_slices(study.path, cfg, tmp_path / "cache")
    assert 3 in kept.tolist()
    viewer._volumes.clear()
    cached = _png(viewer.thumbnail(study, 3, cfg, tmp_path / "cache", size=32))
    assert not viewer._volumes  # the study itself was not read
    model_input = model_ready_slice(read_volume(study.path), 3, cfg)
    np.testing.assert_array_equal(cached, made)
    np.testing.assert_array_equal(cached, model_input.T[::-1, ::-1])
