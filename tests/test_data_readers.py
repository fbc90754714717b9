"""Readers and preprocessing on real files written to disk: orientation, windowing, formats, bad input."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series
from PIL import Image

from ss_stylegan.config import ConfigError, SliceConfig
from ss_stylegan.data.cache import read_study_slices
from ss_stylegan.data.preprocess import (
    apply_window,
    encode_png,
    keep_mask,
    model_ready_slice,
    resize_square,
    window_range,
)
from ss_stylegan.data.readers import StudyReadError, image_id_of, read_volume

SHARED_VOLUMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "iqothnccd" / "volumes" / "64"
SHARED_NPZ = SHARED_VOLUMES.parents[1] / "iqothnccd_64.npz"


def _phantom(shape: tuple[int, int, int] = (8, 10, 6)) -> np.ndarray:
    """HU-like volume: soft tissue (40) in every slice, air (-1000) border, marker 1000 at voxel (1, 2, 0)."""
    data = np.full(shape, -1000, dtype=np.int16)
    data[1:-1, 1:-1, :] = 40
    data[1, 2, 0] = 1000
    return data


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_identity_affine_keeps_stored_array(tmp_path: Path) -> None:
    data = _phantom()
    vol = read_volume(_save_nifti(tmp_path / "ident.nii.gz", data, np.eye(4)))
    np.testing.assert_array_equal(vol.data, data.astype(np.float32))
    assert vol.is_hu and not vol.is_8bit
    np.testing.assert_allclose(vol.slice_positions()[:, 2], np.arange(6))


def test_flipped_axes_are_reoriented_to_ras(tmp_path: Path) -> None:
    data = _phantom()
    affine = np.diag([-0.5, 0.5, -2.0, 1.0])  # stored L->R reversed and superior -> inferior
    affine[:3, 3] = [10.0, -20.0, 30.0]
    vol = read_volume(_save_nifti(tmp_path / "flip.nii", data, affine))
    assert vol.data.shape == (8, 10, 6)
    # the marker at stored (1, 2, 0) lands at (7 - 1, 2, 5 - 0)
    assert tuple(np.argwhere(vol.data == 1000)[0]) == (6, 2, 5)
    # canonical slices run inferior -> superior; the marker slice keeps its world z
    z = vol.slice_positions()[:, 2]
    assert np.all(np.diff(z) > 0)
    assert z[5] == pytest.approx(30.0)  # stored slice 0 sits at world z = 30
    world = affine @ [1, 2, 0, 1]
    np.testing.assert_allclose(vol.affine @ [6, 2, 5, 1], world)


def test_permuted_axes_are_reoriented_to_ras(tmp_path: Path) -> None:
    data = _phantom((6, 8, 10))
    # stored axis 0 -> S, axis 1 -> R, axis 2 -> A
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [3.0, 0, 0, 0], [0, 0, 0, 1]])
    vol = read_volume(_save_nifti(tmp_path / "perm.nii.gz", data, affine))
    assert vol.data.shape == (8, 10, 6)
    assert tuple(np.argwhere(vol.data == 1000)[0]) == (2, 0, 1)  # stored (1, 2, 0) -> (R=2, A=0, S=1)
    np.testing.assert_allclose(vol.slice_positions()[:, 2], 3.0 * np.arange(6))


def test_nrrd_lps_is_converted_to_ras(tmp_path: Path) -> None:
    arr = np.full((5, 6, 7), -1000, dtype=np.int16)  # SimpleITK order [z, y, x]
    arr[:, 1:-1, 1:-1] = 40
    arr[0, 1, 1] = 1000  # x=1, y=1 (LPS), z=0
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.5, 0.8, 2.0))
    image.SetOrigin((-10.0, 20.0, -30.0))
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    vol = read_volume(tmp_path / "scan.nrrd")
    assert vol.data.shape == (7, 6, 5)
    # LPS x/y grow towards left/posterior: in RAS order they are reversed
    assert tuple(np.argwhere(vol.data == 1000)[0]) == (7 - 1 - 1, 6 - 1 - 1, 0)
    lps = np.array([-10.0 + 0.5 * 1, 20.0 + 0.8 * 1, -30.0])
    np.testing.assert_allclose(vol.affine @ [5, 4, 0, 1], [-lps[0], -lps[1], lps[2], 1.0])
    assert vol.is_hu


def test_dicom_series_folder(tmp_path: Path) -> None:
    arr = np.full((4, 6, 6), -1000, dtype=np.int16)
    arr[:, 1:-1, 1:-1] = 40
    arr[3, 1, 2] = 1000  # top slice, row y=1, column x=2
    write_dicom_series(tmp_path / "ct_series", arr, (0.7, 0.7, 5.0))
    vol = read_volume(tmp_path / "ct_series")
    assert image_id_of(tmp_path / "ct_series") == "ct_series"
    assert vol.data.shape == (6, 6, 4) and vol.is_hu
    assert tuple(np.argwhere(vol.data == 1000)[0]) == (6 - 1 - 2, 6 - 1 - 1, 3)
    np.testing.assert_allclose(vol.slice_positions()[:, 2], [0.0, 5.0, 10.0, 15.0])


def test_window_values() -> None:
    cfg = SliceConfig(window="lung")
    low, high = window_range(np.zeros(1), True, cfg)
    assert (low, high) == (-1350.0, 150.0)
    np.testing.assert_array_equal(apply_window(np.array([-2000, -1350, -600, 150, 3000]), low, high),
                                  [0, 0, 128, 255, 255])
    assert window_range(np.zeros(1), True, SliceConfig(window="abdomen")) == (-160.0, 240.0)
    custom = SliceConfig(window="custom", window_center=0.0, window_width=100.0)
    assert apply_window(np.array([-50.0, 0.0, 25.0]), *window_range(np.zeros(1), False, custom)).tolist() == [0, 128, 191]
    ramp = np.arange(1001, dtype=np.float32)
    assert window_range(ramp, False, SliceConfig(window="percentile", percentiles=(10.0, 90.0))) == (100.0, 900.0)
    # auto: CT window for HU, 0..255 for 8-bit data, percentiles otherwise
    assert window_range(ramp, True, SliceConfig()) == (-1000.0, 600.0)
    assert window_range(ramp, False, SliceConfig(), is_8bit=True) == (0.0, 255.0)
    assert window_range(ramp, False, SliceConfig()) == pytest.approx((5.0, 995.0))
    with pytest.raises(ConfigError, match="valid windows"):
        SliceConfig(window="liver").validate()


def test_resize_pads_to_square_and_keeps_aspect() -> None:
    wide = np.zeros((1, 20, 40), dtype=np.uint8)
    wide[0, :, :] = 200
    out = resize_square(wide, 32)
    assert out.shape == (1, 32, 32) and out.dtype == np.uint8
    # content fills rows 8..23 (20/40 of the height, centred); padding rows are background 0
    assert out[0, :7].max() == 0 and out[0, 25:].max() == 0
    assert out[0, 10:22].min() == 200
    assert keep_mask(out, 0.02).tolist() == [True]
    assert keep_mask(np.zeros((1, 32, 32), np.uint8), 0.0).tolist() == [False]  # constant


def test_slice_identity_and_empty_slices_skipped(tmp_path: Path) -> None:
    data = _phantom((16, 16, 5))
    data[:, :, 2] = -1000  # an all-air slice
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    affine[:3, 3] = [-5.0, -5.0, 100.0]
    slices = read_study_slices(_save_nifti(tmp_path / "case7.nii.gz", data, affine), SliceConfig(resolution=32))
    assert slices.image_id == "case7"
    assert slices.slices.tolist() == [0, 1, 3, 4]
    assert slices.n_slices == 5
    assert slices.images.shape == (4, 32, 32) and slices.images.dtype == np.uint8
    np.testing.assert_allclose(slices.positions[:, 2], [100.0, 105.0, 115.0, 120.0])
    np.testing.assert_allclose(slices.positions[0, :2], [-5.0 + 0.7 * 7.5] * 2, atol=1e-4)  # float32 affine


def test_png_and_jpeg_pictures(tmp_path: Path) -> None:
    rgb = np.zeros((24, 24, 3), dtype=np.uint8)
    rgb[4:20, 4:20] = (200, 100, 50)
    Image.fromarray(rgb).save(tmp_path / "xray.png")
    vol = read_volume(tmp_path / "xray.png")
    assert vol.data.shape == (24, 24, 1) and vol.is_8bit and not vol.is_hu
    grey = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert vol.data[10, 10, 0] == pytest.approx(grey, abs=1)
    slices = read_study_slices(tmp_path / "xray.png", SliceConfig(resolution=32))
    assert slices.image_id == "xray" and slices.slices.tolist() == [0]
    assert slices.images[0, 16, 16] == pytest.approx(grey, abs=1)  # auto keeps 8-bit contrast
    grey_img = np.zeros((30, 20), dtype=np.uint8)
    grey_img[0:5, :] = 255  # a bright band at the top of the picture stays at the top
    Image.fromarray(grey_img).save(tmp_path / "photo.JPG", quality=95)
    jpg = read_study_slices(tmp_path / "photo.JPG", SliceConfig(resolution=32))
    assert jpg.image_id == "photo"
    assert jpg.images[0, :4, 8:24].mean() > 200 and jpg.images[0, 20:].mean() < 20  # columns 0-5 are padding


def test_four_d_volumes(tmp_path: Path) -> None:
    data = np.stack([_phantom(), _phantom()], axis=-1)
    with pytest.raises(StudyReadError, match=r"4d\.nii\.gz.*4-D"):
        read_volume(_save_nifti(tmp_path / "4d.nii.gz", data, np.eye(4)))
    single = read_volume(_save_nifti(tmp_path / "single.nii.gz", data[..., :1], np.eye(4)))
    assert single.data.shape == (8, 10, 6)


def test_nan_and_constant_volumes(tmp_path: Path) -> None:
    data = _phantom().astype(np.float32)
    data[0, 0, :] = np.nan
    data[0, 1, 0] = np.inf
    vol = read_volume(_save_nifti(tmp_path / "nan.nii.gz", data, np.eye(4)))
    assert np.isfinite(vol.data).all() and vol.data[0, 0, 0] == -1000.0
    slices = read_study_slices(tmp_path / "nan.nii.gz", SliceConfig(resolution=32))
    assert len(slices.slices) == 6
    const = read_study_slices(_save_nifti(tmp_path / "const.nii.gz", np.full((8, 8, 3), 7.0, np.float32), np.eye(4)),
                              SliceConfig(resolution=32, min_foreground=0.0))
    assert const.images.shape == (0, 32, 32) and const.n_slices == 3
    with pytest.raises(StudyReadError, match="no finite value"):
        read_volume(_save_nifti(tmp_path / "allnan.nii", np.full((4, 4, 2), np.nan, np.float32), np.eye(4)))


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    good = _save_nifti(tmp_path / "good.nii.gz", _phantom(), np.eye(4))
    raw = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StudyReadError, match=r"trunc\.nii\.gz"):
        read_volume(tmp_path / "trunc.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(StudyReadError, match=r"bad\.nii\.gz"):
        read_volume(tmp_path / "bad.nii.gz")
    (tmp_path / "fake.png").write_text("hello", encoding="utf-8")
    with pytest.raises(StudyReadError, match=r"fake\.png"):
        read_volume(tmp_path / "fake.png")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(StudyReadError, match=r"notes\.txt.*unsupported file type"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(StudyReadError, match="does not exist"):
        read_volume(tmp_path / "missing.nii.gz")


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_NPZ.exists(), reason="shared IQ-OTH/NCCD data absent")
def test_shared_volumes_keep_sidecar_slice_order() -> None:
    images = np.load(SHARED_NPZ)["images"]
    for path in sorted(SHARED_VOLUMES.glob("*.nii.gz"))[:3]:
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text(encoding="utf-8"))
        vol = read_volume(path)
        assert vol.is_8bit and not vol.is_hu
        for entry in sidecar["slices"]:
            np.testing.assert_array_equal(vol.data[:, :, entry["slice"]], images[entry["npz_index"]])
        slices = read_study_slices(path, SliceConfig(resolution=64))
        index = [sidecar["slices"][k]["npz_index"] for k in slices.slices]
        np.testing.assert_array_equal(slices.images, images[index])  # 64 px, auto window: identical


def test_resize_is_antialiased() -> None:
    checker = (np.indices((96, 96)).sum(axis=0) % 2 * 255).astype(np.uint8)[None]
    out = resize_square(checker, 32)  # 3x down: plain bilinear would sample pure 0/255 pixels
    assert abs(float(out.mean()) - 127.5) < 3 and out.std() < 30


def test_max_slices_per_study_is_evenly_spaced(tmp_path: Path) -> None:
    path = _save_nifti(tmp_path / "long.nii.gz", _phantom((8, 8, 21)), np.eye(4))
    slices = read_study_slices(path, SliceConfig(resolution=32, max_slices_per_study=5))
    assert slices.slices.tolist() == [0, 5, 10, 15, 20]
    with pytest.raises(ConfigError, match="max_slices_per_study"):
        SliceConfig(max_slices_per_study=0).validate()
    with pytest.raises(ConfigError, match="positive window_width"):
        SliceConfig(window="custom", window_center=40.0, window_width=-5.0).validate()


def test_model_ready_slice_is_the_slice_the_cache_holds(tmp_path: Path) -> None:
    arr = np.random.default_rng(5).integers(-1000, 600, (20, 14, 6)).astype(np.int16)
    affine = np.diag([-0.8, 0.8, -2.5, 1.0])  # x towards L and slices towards I: both reoriented
    nib.save(nib.Nifti1Image(arr, affine), tmp_path / "flip.nii.gz")
    cfg = SliceConfig(resolution=16, min_foreground=0.0)
    volume = read_volume(tmp_path / "flip.nii.gz")
    cached = read_study_slices(tmp_path / "flip.nii.gz", cfg)
    assert cached.slices.tolist() == list(range(6))
    for k in range(6):
        np.testing.assert_array_equal(model_ready_slice(volume, k, cfg), cached.images[k])
    # canonical slice 0 is the file's last (most inferior) slice, x reversed, windowed (auto CT) and resized
    expected = resize_square(apply_window(arr[::-1, :, 5][None].astype(np.float32), *window_range(volume.data, True, cfg)), 16)
    np.testing.assert_array_equal(model_ready_slice(volume, 0, cfg), expected[0])
    with pytest.raises(IndexError, match=r"slices 0\.\.5"):
        model_ready_slice(volume, 6, cfg)
    png = encode_png(model_ready_slice(volume, 2, cfg))
    with Image.open(io.BytesIO(png)) as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), cached.images[2])
