"""Slicer-free map and geometry logic of the Slicer module: colours, pixel layout, click picking, PNG, slice worlds."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "slicer_module" / "SSStyleGANLabel"))

from SSStyleGANLabelLib.errors import ProtocolError  # noqa: E402
from SSStyleGANLabelLib.geometry import (  # noqa: E402
    axial_axis,
    canonical_slice_world,
    slice_at_plane,
)
from SSStyleGANLabelLib.mapview import (  # noqa: E402
    CLASS_PALETTE,
    UNLABELLED_RGB,
    MapPoints,
    MapScene,
    render_png,
)

CLASSES = ("normal", "lesion")


def _payload() -> dict:
    # two clusters: study a (slices 0-2) around (0, 0), study b (slices 0-2) around (10, 10)
    return {
        "model_version": "v1",
        "points": {
            "image": ["a", "a", "a", "b", "b", "b"],
            "slice": [0, 1, 2, 0, 1, 2],
            "x": [0.0, 1.0, 0.5, 10.0, 11.0, 10.5],
            "y": [0.0, 0.0, 1.0, 10.0, 10.0, 11.0],
            "label": ["normal", None, None, None, "lesion", None],
            "prediction": ["normal", "normal", "normal", "lesion", "lesion", "lesion"],
            "score": [1.0, 0.9, 0.8, 0.7, 1.0, 0.6],
        },
    }


def test_map_points_parse_and_find_slices() -> None:
    points = MapPoints.from_json(_payload())
    assert len(points) == 6
    assert points.xy.shape == (6, 2)
    assert points.model_version == "v1"
    assert points.index_of("b", 1) == 4
    assert points.index_of("b", 7) is None
    assert points.key(points.nearest(10.9, 10.2)) == ("b", 1)
    assert points.nearest(10.9, 10.2, max_distance=0.01) is None


def test_map_points_reject_a_broken_answer() -> None:
    bad = _payload()
    bad["points"]["x"] = bad["points"]["x"][:-1]
    with pytest.raises(ProtocolError, match="different lengths"):
        MapPoints.from_json(bad)
    with pytest.raises(ProtocolError, match="points"):
        MapPoints.from_json({"model_version": "v1"})


def test_colours_by_label_and_by_prediction() -> None:
    points = MapPoints.from_json(_payload())
    by_label = points.colours("label", CLASSES)
    assert tuple(by_label[0]) == CLASS_PALETTE[0]
    assert tuple(by_label[4]) == CLASS_PALETTE[1]
    assert tuple(by_label[1]) == UNLABELLED_RGB
    by_pred = points.colours("prediction", CLASSES)
    assert tuple(by_pred[1]) == CLASS_PALETTE[0] and tuple(by_pred[3]) == CLASS_PALETTE[1]
    with pytest.raises(ValueError, match="colour mode"):
        points.colours("size", CLASSES)


def test_session_labels_override_the_fetched_label_column() -> None:
    points = MapPoints.from_json(_payload()).with_labels({("a", 2): "lesion"})
    assert list(points.labels) == [None, None, "lesion", None, None, None]


def test_scene_round_trips_pixels_and_picks_the_clicked_dot() -> None:
    points = MapPoints.from_json(_payload())
    scene = MapScene(points, CLASSES, width=300, height=200, highlighted=(("a", 1),), current=("b", 2))
    pix = scene.to_pixels(points.xy)
    assert np.all(pix[:, 0] >= scene.margin) and np.all(pix[:, 0] <= 300 - scene.margin)
    assert np.all(pix[:, 1] >= 0) and np.all(pix[:, 1] <= 200)
    assert pix[3, 1] < pix[0, 1]  # larger map y is higher up on screen
    for i in range(len(points)):
        assert np.allclose(scene.to_map(*pix[i]), points.xy[i])
        assert scene.pick(pix[i, 0] + 1.0, pix[i, 1] - 1.0) == points.key(i)
    assert scene.pick(299.0, 0.0) is None  # empty corner

    dots = scene.dots()
    assert [d["key"] for d in dots][-2:] == [("a", 1), ("b", 2)]  # highlighted, then current on top
    assert dots[-1]["radius"] > dots[0]["radius"] and dots[-1]["ring"] is not None
    assert [name for name, _ in scene.legend()][:2] == list(CLASSES)


def test_render_png_has_the_scene_size(tmp_path: Path) -> None:
    from PIL import Image

    scene = MapScene(MapPoints.from_json(_payload()), CLASSES, width=320, height=240, mode="prediction")
    path = render_png(scene, tmp_path / "map.png")
    with Image.open(path) as img:
        assert img.size == (320, 240)
        rgb = np.asarray(img.convert("RGB"), dtype=np.int32)
    # the dot of point 0 is drawn in the first class colour at its pixel position
    x, y = (int(round(v)) for v in scene.to_pixels(scene.points.xy[:1])[0])
    expected = np.round(np.array(CLASS_PALETTE[0]) * 255)
    assert np.abs(rgb[y, x] - expected).max() <= 40


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([0.7, 0.7, 5.0, 1.0]),                                          # RAS as stored
        np.array([[-0.7, 0, 0, 30], [0, -0.7, 0, 20], [0, 0, -5.0, 90], [0, 0, 0, 1.0]]),  # LPI: all flipped
        np.array([[0, 0, 0.7, -10], [0.7, 0, 0, 5], [0, -5.0, 0, 40], [0, 0, 0, 1.0]]),    # permuted axes
    ],
    ids=["ras", "lpi", "permuted"],
)
def test_canonical_slice_world_matches_nibabel(affine: np.ndarray) -> None:
    data = np.zeros((6, 7, 8), dtype=np.int16)
    img = nib.Nifti1Image(data, affine)
    canon = nib.as_closest_canonical(img)
    dims = img.shape
    _, flipped = axial_axis(affine)
    n_axial = canon.shape[2]
    for k in range(n_axial):
        centre = np.array([(canon.shape[0] - 1) / 2, (canon.shape[1] - 1) / 2, k, 1.0])
        expected = (canon.affine @ centre)[:3]
        assert np.allclose(canonical_slice_world(affine, dims, k), expected), (k, flipped)
    worlds = [canonical_slice_world(affine, dims, k)[2] for k in range(n_axial)]
    assert np.all(np.diff(worlds) > 0)  # canonical slice 0 is the most inferior
    with pytest.raises(IndexError, match="outside the volume"):
        canonical_slice_world(affine, dims, n_axial)


def test_slice_at_plane_finds_the_slice_a_view_cuts() -> None:
    worlds = {k: (1.0, 2.0, 10.0 + 5.0 * k) for k in range(4)}
    assert slice_at_plane(worlds, origin=(0, 0, 20.4), normal=(0, 0, 2), max_distance=2.5) == 2
    assert slice_at_plane(worlds, origin=(0, 0, 22.6), normal=(0, 0, 1), max_distance=2.0) is None
    assert slice_at_plane(worlds, origin=(0, 0, 22.6), normal=(0, 0, 1), max_distance=2.5) == 3
    assert slice_at_plane({}, origin=(0, 0, 0), normal=(0, 0, 1), max_distance=1.0) is None
