"""Synthetic CT studies: files, sidecars, HU content, reproducibility, and two learnable-but-not-trivial classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import balanced_accuracy_score

from ss_stylegan.data.cache import find_studies
from ss_stylegan.data.readers import read_volume
from ss_stylegan.data.synthetic import (
    make_synthetic_datastore,
    make_synthetic_study,
    read_sidecar_labels,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_SIDECAR = ROOT.parent / "shared" / "data" / "iqothnccd" / "volumes" / "64" / "iqothnccd_64_vol00.json"


def test_study_file_sidecar_and_hu_content(tmp_path: Path) -> None:
    sidecar = make_synthetic_study(tmp_path / "chest.nii.gz", n_slices=10, size=64, lesion_slices=[3, 4, 5],
                                   random_state=0)
    img = nib.load(tmp_path / "chest.nii.gz")
    assert img.shape == (64, 64, 10) and img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), (0.7 * 8, 0.7 * 8, 5.0))
    on_disk = json.loads((tmp_path / "chest.json").read_text(encoding="utf-8"))
    assert on_disk == sidecar
    assert on_disk["classes"] == ["normal", "lesion"] and on_disk["n_slices"] == 10
    assert [s["label"] for s in on_disk["slices"]] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert {s["class"] for s in on_disk["slices"] if s["label"] == 1} == {"lesion"}
    assert on_disk["class_counts"] == {"normal": 7, "lesion": 3}
    data = img.get_fdata()
    assert abs(np.median(data[:3, :3, :]) - (-1000)) < 40  # air outside the body
    assert abs(np.median(data[32, 32, :]) - 40) < 40  # soft tissue (mediastinum) in the middle
    assert (data < -700).mean() > 0.1 and data.max() > 600  # lungs and a bright spine
    vol = read_volume(tmp_path / "chest.nii.gz")
    assert vol.is_hu
    with pytest.raises(ValueError, match="outside"):
        make_synthetic_study(tmp_path / "bad.nii.gz", n_slices=4, lesion_slices=[4])


def test_sidecar_keys_mirror_shared_layout(tmp_path: Path) -> None:
    sidecar = make_synthetic_study(tmp_path / "a.nii.gz", n_slices=4, size=32, random_state=1)
    if SHARED_SIDECAR.exists():
        shared = json.loads(SHARED_SIDECAR.read_text(encoding="utf-8"))
        assert {"classes", "n_slices", "class_counts", "slices"} <= set(shared) & set(sidecar)
        assert {"slice", "label", "class"} <= set(shared["slices"][0]) & set(sidecar["slices"][0])
    assert read_sidecar_labels(tmp_path / "a.nii.gz").tolist() == [s["label"] for s in sidecar["slices"]]


def test_datastore_is_reproducible(tmp_path: Path) -> None:
    paths = make_synthetic_datastore(tmp_path / "a", n_studies=4, n_slices=24, size=64, random_state=7)
    again = make_synthetic_datastore(tmp_path / "b", n_studies=4, n_slices=24, size=64, random_state=7)
    other = make_synthetic_datastore(tmp_path / "c", n_studies=1, n_slices=24, size=64, random_state=8)
    assert [p.name for p in paths] == ["study_00.nii.gz", "study_01.nii.gz", "study_02.nii.gz", "study_03.nii.gz"]
    assert [s.image_id for s in find_studies(tmp_path / "a")] == ["study_00", "study_01", "study_02", "study_03"]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(paths, again))
    assert paths[0].read_bytes() != other[0].read_bytes()
    labels = np.concatenate([read_sidecar_labels(p) for p in paths])
    assert 0.2 < labels.mean() < 0.6  # both classes, neither rare


def _nodule_area(slice_hu: np.ndarray) -> int:
    """Largest dense blob enclosed by lung: what a nodule (big) or a vessel (small) looks like."""
    lungs = (slice_hu < -500) & ndimage.binary_fill_holes(slice_hu > -500)
    enclosed, _ = ndimage.label(ndimage.binary_fill_holes(lungs) & ~lungs)
    return int(np.bincount(enclosed.ravel())[1:].max(initial=0))


def test_classes_are_learnable_but_not_trivial(tmp_path: Path) -> None:
    paths = make_synthetic_datastore(tmp_path, n_studies=6, n_slices=24, size=64, random_state=1)
    areas, means, labels = [], [], []
    for path in paths:
        data = nib.load(path).get_fdata()
        labels += read_sidecar_labels(path).tolist()
        for k in range(data.shape[2]):
            areas.append(_nodule_area(data[:, :, k]))
            means.append(float(data[:, :, k].mean()))
    labels_arr, areas_arr, means_arr = np.asarray(labels), np.asarray(areas), np.asarray(means)

    def best_threshold(feature: np.ndarray) -> float:
        return max(max(balanced_accuracy_score(labels_arr, feature > t), balanced_accuracy_score(labels_arr, feature < t))
                   for t in np.unique(feature))

    assert best_threshold(areas_arr) > 0.9  # the nodule is there to be found
    assert best_threshold(means_arr) < 0.8  # but global intensity does not give it away


def test_sample_datastore_script(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_sample_datastore.py"), "--out", str(out),
         "--studies", "2", "--slices", "8", "--size", "32", "--pictures", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert [s.image_id for s in find_studies(out)] == ["study_00", "study_01"]
    pictures = find_studies(out / "pictures")
    assert len(pictures) == 2 and all(s.path.suffix == ".png" for s in pictures)
    assert read_volume(pictures[0].path).data.shape == (32, 32, 1)
    assert json.loads((out / "pictures" / "labels.json").read_text(encoding="utf-8"))[pictures[0].image_id] in ("normal", "lesion")
