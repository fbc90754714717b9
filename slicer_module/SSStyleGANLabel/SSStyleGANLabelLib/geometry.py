"""Slice geometry shared by the server and the viewer, without Slicer.

The server numbers slices along the axial axis of the volume reoriented to RAS (nibabel's closest canonical
orientation; ``docs/ARCHITECTURE.md``, data conventions) and reports each slice's world centre. The viewer
keeps the file's own voxel order (IJK) with an IJK->RAS matrix. These two functions translate between the two
when the server's ``world`` position is not at hand, and find which server slice a viewer plane shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def axial_axis(ijk_to_ras: np.ndarray) -> tuple[int, bool]:
    """Which voxel axis runs closest to superior, and whether it runs towards inferior.

    Args:
        ijk_to_ras: the volume's 4x4 (or 3x3) IJK -> RAS matrix.

    Returns:
        ``(axis, flipped)``: the voxel axis (0, 1 or 2) whose direction has the largest S component, and
        True when that component is negative (canonical slice 0 is then the file's last slice).
    """
    m = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    directions = m / np.maximum(np.linalg.norm(m, axis=0, keepdims=True), 1e-12)
    axis = int(np.argmax(np.abs(directions[2])))
    return axis, bool(directions[2, axis] < 0)


def canonical_slice_world(ijk_to_ras: np.ndarray, dims: Sequence[int], slice_index: int) -> tuple[float, float, float]:
    """World (R, A, S) centre of the server's canonical axial slice ``slice_index`` of a volume.

    Args:
        ijk_to_ras: the volume's 4x4 IJK -> RAS matrix (as Slicer's ``GetIJKToRASMatrix`` gives it).
        dims: the volume's voxel dimensions (I, J, K).
        slice_index: canonical axial index (0 = most inferior slice).

    Raises:
        IndexError: the index is outside the volume.
    """
    m = np.asarray(ijk_to_ras, dtype=np.float64)
    axis, flipped = axial_axis(m)
    n = int(dims[axis])
    if not 0 <= slice_index < n:
        raise IndexError(f"slice {slice_index} is outside the volume, which has {n} axial slices")
    ijk = np.array([(d - 1) / 2.0 for d in dims] + [1.0])
    ijk[axis] = n - 1 - slice_index if flipped else slice_index
    r, a, s = (m @ ijk)[:3]
    return (float(r), float(a), float(s))


def slice_at_plane(
    worlds: Mapping[int, Sequence[float]],
    origin: Sequence[float],
    normal: Sequence[float],
    max_distance: float,
) -> int | None:
    """The slice whose world centre lies closest to a viewer's plane, if within ``max_distance`` mm.

    Args:
        worlds: slice index -> world (R, A, S) centre, as the server reported them.
        origin: a point of the plane (RAS mm), e.g. the slice view's centre.
        normal: the plane's normal (need not be unit length).
        max_distance: farthest a centre may be from the plane to count (e.g. half the slice spacing).

    Returns:
        The slice index, or None when no centre is close enough (the plane is between slices or elsewhere).
    """
    if not worlds:
        return None
    n = np.asarray(normal, dtype=np.float64)
    n = n / max(float(np.linalg.norm(n)), 1e-12)
    keys = list(worlds)
    pts = np.asarray([worlds[k] for k in keys], dtype=np.float64).reshape(len(keys), 3)
    dist = np.abs((pts - np.asarray(origin, dtype=np.float64)) @ n)
    best = int(np.argmin(dist))
    return int(keys[best]) if dist[best] <= max_distance else None
