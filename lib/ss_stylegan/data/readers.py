"""Read a study (NIfTI, NRRD, DICOM series, PNG/JPEG) into a canonical RAS array of axial slices.

Every reader returns a :class:`Volume`: a ``float32`` array ``[X, Y, Z]`` in nibabel's closest
canonical (RAS+) orientation, so that ``data[:, :, k]`` is axial slice ``k`` and ``k`` grows from
inferior to superior, plus the matching voxel-to-world affine (RAS, mm). For a NIfTI file whose
affine is already RAS-aligned (e.g. the identity) the array is exactly the stored one.

SimpleITK images (NRRD, DICOM) carry an LPS direction matrix; it is converted to RAS before the
same canonical reorientation. A 2-D picture is a volume of one slice whose ``data[:, :, 0]`` is the
picture as displayed (row index first), with an identity affine.

Non-finite voxels (NaN, inf) are replaced by the volume's smallest finite value (background), so
they never reach windowing or the networks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import locale
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES + PICTURE_SUFFIXES
"""File suffixes read as one study each (lower case; ``.nii.gz`` before ``.nii``)."""


class StudyReadError(Exception):
    """A study could not be read. The message names the file and says what to do.

    Attributes:
        path: the file or DICOM folder that failed.
    """

    def __init__(self, path: str | Path, problem: str, advice: str = "") -> None:
        self.path = Path(path)
        advice = advice or "check that the file is a complete, uncorrupted image, or remove it from the folder"
        super().__init__(f"cannot read study '{self.path}': {problem}; {advice}")


@dataclasses.dataclass
class Volume:
    """A study in canonical RAS orientation.

    Attributes:
        data: ``float32 [X, Y, Z]``, axial slices along the last axis, inferior -> superior;
            every value is finite.
        affine: ``float64 [4, 4]`` voxel index -> world RAS (mm) of ``data``.
        is_hu: whether the intensities look like CT Hounsfield units.
        path: where the study was read from.
        is_8bit: stored as unscaled 8-bit grey (a picture or an exported, already windowed
            slice stack), so ``0..255`` is its display range.
    """

    data: np.ndarray
    affine: np.ndarray
    is_hu: bool
    path: Path
    is_8bit: bool = False

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[2])

    def slice_positions(self) -> np.ndarray:
        """World RAS coordinates (mm) of every slice centre, ``float64 [Z, 3]``."""
        nx, ny, nz = self.data.shape
        ijk = np.stack(
            [np.full(nz, (nx - 1) / 2.0), np.full(nz, (ny - 1) / 2.0), np.arange(nz, dtype=np.float64), np.ones(nz)],
            axis=1,
        )
        return (ijk @ self.affine.T)[:, :3]


def image_id_of(path: str | Path) -> str:
    """MONAI Label image id of a study: the file name without its image suffix, or a folder's name."""
    path = Path(path)
    name = path.name
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES + DICOM_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def is_volume_file(path: str | Path) -> bool:
    """Whether ``path`` has a suffix this module reads as a single-file study."""
    return Path(path).name.lower().endswith(VOLUME_SUFFIXES)


def looks_like_dicom_file(path: Path) -> bool:
    """A DICOM file has a known suffix or the ``DICM`` magic at byte 128."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_volume(path: str | Path) -> Volume:
    """Read a study file or DICOM series folder into a canonical RAS :class:`Volume`.

    Args:
        path: a ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``/``.mha``/``.mhd``, ``.png``/``.jpg``/``.jpeg``
            file, or a folder holding one DICOM series.

    Returns:
        The volume, ``data`` shaped ``[X, Y, Z]`` (``Z = 1`` for a picture).

    Raises:
        StudyReadError: the path is missing, of an unsupported type, corrupt, truncated,
            4-D with more than one volume, multi-component, or holds no finite value.
    """
    path = Path(path)
    if not path.exists():
        raise StudyReadError(path, "it does not exist", "check the path")
    lower = path.name.lower()
    try:
        if path.is_dir():
            data, affine, is_8bit = _read_dicom_series(path)
        elif lower.endswith(NIFTI_SUFFIXES):
            data, affine, is_8bit = _read_nifti(path)
        elif lower.endswith(SITK_SUFFIXES):
            data, affine, is_8bit = _read_sitk_file(path)
        elif lower.endswith(PICTURE_SUFFIXES):
            data, affine, is_8bit = _read_picture(path)
        else:
            raise StudyReadError(
                path,
                "unsupported file type",
                f"use NIfTI, NRRD, MHA, PNG or JPEG files ({', '.join(VOLUME_SUFFIXES)}) or a DICOM series folder",
            )
    except StudyReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure on a file is a read error of that file
        detail = " ".join(str(exc).split())  # decoders (ITK) write multi-line reports
        if len(detail) > 300:
            detail = detail[:300] + " ..."
        raise StudyReadError(path, f"{type(exc).__name__}: {detail}") from exc
    data = _finite(data, path)
    return Volume(data=data, affine=affine, is_hu=looks_like_hu(data), path=path, is_8bit=is_8bit)


def looks_like_hu(data: np.ndarray) -> bool:
    """CT in Hounsfield units has air near -1000: a minimum below -500 and a range above 1000."""
    lo, hi = float(data.min()), float(data.max())
    return lo < -500.0 and hi - lo > 1000.0


def _finite(data: np.ndarray, path: Path) -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        if bad.all():
            raise StudyReadError(path, "it holds no finite value (all NaN or inf)")
        fill = float(data[~bad].min())
        logger.warning("%s: %d non-finite voxels replaced by the background value %g", path, int(bad.sum()), fill)
        data = np.where(bad, np.float32(fill), data)
    return data


def _four_d_error(path: Path, shape: tuple[int, ...]) -> StudyReadError:
    return StudyReadError(
        path,
        f"it is 4-D with more than one volume (shape {tuple(shape)}); only 3-D images, or 4-D with a single "
        "volume (which is used as 3-D), are supported",
        "save each volume (e.g. each time point or channel) as its own 3-D file",
    )


def _to_canonical(data: np.ndarray, affine: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Squeeze a singleton 4th axis, then reorient ``[X, Y, Z]`` data with a RAS affine to RAS+."""
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise _four_d_error(path, data.shape)
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim != 3:
        raise StudyReadError(path, f"it has {data.ndim} dimensions (shape {data.shape}); expected a 2-D or 3-D image")
    ornt = nib.orientations.io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return data, affine
    canonical = nib.orientations.apply_orientation(data, ornt)
    affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return np.ascontiguousarray(canonical), affine


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    img = nib.load(str(path))
    if len(img.shape) > 4:
        raise StudyReadError(path, f"it has {len(img.shape)} dimensions (shape {img.shape}); expected 3-D")
    if len(img.shape) == 4 and img.shape[3] != 1:
        raise _four_d_error(path, img.shape)  # before loading every volume into memory
    slope, inter = img.dataobj.slope, img.dataobj.inter
    is_8bit = img.get_data_dtype() == np.uint8 and slope == 1.0 and inter == 0.0
    data = np.asanyarray(img.dataobj).astype(np.float32, copy=False)
    return (*_to_canonical(data, img.affine.astype(np.float64), path), bool(is_8bit))


def _sitk_to_canonical(image: object, path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise StudyReadError(
            path,
            f"it has {image.GetNumberOfComponentsPerPixel()} components per voxel",
            "save a single-channel (grey) image",
        )
    dim = image.GetDimension()
    if dim == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise _four_d_error(path, tuple(size))
        image = sitk.Extract(image, [*size[:3], 0], [0, 0, 0, 0])
        dim = 3
    if dim not in (2, 3):
        raise StudyReadError(path, f"it has {dim} dimensions; expected 2-D or 3-D")
    array = sitk.GetArrayFromImage(image)  # [z, y, x] (or [y, x])
    data = np.transpose(array).astype(np.float32, copy=False)  # [x, y, z]
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    lps = np.eye(4)
    lps[:dim, :dim] = direction @ np.diag(spacing)
    lps[:dim, 3] = origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return (*_to_canonical(data, ras, path), image.GetPixelID() == sitk.sitkUInt8)


@contextlib.contextmanager
def _keep_locale() -> Iterator[None]:
    """Restore the process locale after a SimpleITK/GDCM read.

    GDCM's DICOM reader switches ``LC_CTYPE`` to ``C`` for the whole process, after which Python text
    I/O without an explicit encoding falls back to ASCII. A server must not change behaviour because
    it once read a DICOM series.
    """
    saved = locale.setlocale(locale.LC_CTYPE)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_CTYPE) != saved:
            locale.setlocale(locale.LC_CTYPE, saved)


def _read_sitk_file(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    import SimpleITK as sitk

    with _keep_locale():
        image = sitk.ReadImage(str(path))
    return _sitk_to_canonical(image, path)


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    import SimpleITK as sitk

    with _keep_locale():
        return _read_dicom_series_unguarded(folder, sitk)


def _read_dicom_series_unguarded(folder: Path, sitk: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise StudyReadError(folder, "the folder holds no DICOM series", "put one DICOM series per folder")
    if len(series) > 1:
        counts = {sid: len(reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series}
        chosen = max(series, key=lambda sid: counts[sid])
        logger.warning("%s holds %d DICOM series; using the largest (%s, %d files)", folder, len(series), chosen,
                       counts[chosen])
    else:
        chosen = series[0]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), chosen))
    return _sitk_to_canonical(reader.Execute(), folder)


def _read_picture(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        is_8bit = img.mode not in ("I", "I;16", "I;16B", "I;16L", "F")
        grey = np.asarray(img.convert("L") if is_8bit else img, dtype=np.float32)
    # data[:, :, 0] is the picture as displayed: first index = row (top to bottom).
    return grey[:, :, np.newaxis], np.eye(4), is_8bit
