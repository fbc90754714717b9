"""Write small CT DICOM series for tests: one file per slice, with the geometry tags a reader needs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_dicom_series(
    folder: Path,
    hu_zyx: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 2.5),
    row_direction: Sequence[float] = (1.0, 0.0, 0.0),
    column_direction: Sequence[float] = (0.0, 1.0, 0.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    series_uid: str = "1.2.826.0.1.3680043.2.1125.7.2",
) -> None:
    """One CT series in a new ``folder``, one file ``IM<k>.dcm`` per slice (instance ``k + 1``).

    Args:
        folder: the series folder (must not exist).
        hu_zyx: int16 ``[z, y, x]`` in HU; file ``k`` holds ``hu_zyx[k]`` (rows = y, columns = x).
        spacing: (column spacing x, row spacing y, slice distance) in mm.
        row_direction, column_direction: DICOM image orientation (patient, LPS) of x and y.
        origin: LPS position (mm) of the first voxel of slice 0; slice k lies ``k * spacing[2]`` mm
            along ``row_direction x column_direction``.
    """
    folder.mkdir()
    row, column = np.asarray(row_direction, float), np.asarray(column_direction, float)
    normal = np.cross(row, column)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu_zyx.shape[0]):
        image = sitk.GetImageFromArray(hu_zyx[k])
        image.SetSpacing([float(spacing[0]), float(spacing[1])])
        position = np.asarray(origin, float) + k * float(spacing[2]) * normal
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7.1",
            "0020|000e": series_uid,
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*row, *column)),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0013": str(k + 1),
            "0018|0050": f"{float(spacing[2]):g}",
            "0028|1052": "0",
            "0028|1053": "1",
        }.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(image)
