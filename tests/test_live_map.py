"""The live slice map (``labelling/live_map.py``) and the placement of new slices (``maps/placement.py``), without
a server: a trained datastore copy, its published map, and studies added, deleted and rewritten on disk."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.cache import read_study_slices
from ss_stylegan.data.synthetic import make_synthetic_study
from ss_stylegan.labelling.live_map import LiveSliceMap
from ss_stylegan.labelling.studies import StudyIndex
from ss_stylegan.maps.placement import MapEmbedder
from ss_stylegan.workspace import Workspace


def _live(studies: Path) -> tuple[LiveSliceMap, Workspace]:
    workspace = Workspace(studies / ".ss_stylegan")
    return LiveSliceMap(StudyIndex(studies), workspace, SliceConfig(resolution=32), "cpu", lambda: False), workspace


def _settle(live: LiveSliceMap) -> None:
    """One background update with a sweep of the studies on disk (not after SWEEP_S), then the updates it
    leads to, until nothing is left to do."""
    live._next_sweep = 0.0
    for _ in range(5):
        if not live.maybe_refresh():
            return
        live.wait_refresh()
    raise AssertionError("the map kept changing")


def test_placement_puts_a_study_where_the_published_encoder_and_projector_say(
        trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    workspace = Workspace(studies / ".ss_stylegan")
    slice_map = workspace.load_map()
    embedder = MapEmbedder(workspace, "cpu")
    rows = slice_map.rows_of("study_00")
    images = read_study_slices(studies / "study_00.nii.gz", slice_map.read_config(SliceConfig(resolution=32)),
                               "study_00").images
    w, xy = embedder.embed_and_place(images, slice_map)
    np.testing.assert_allclose(w, slice_map.w[rows], rtol=1e-4, atol=1e-4)   # the same encoder, the same W
    assert xy.shape == (len(rows), 2) and np.isfinite(xy).all()
    spread = np.ptp(slice_map.xy, axis=0).max()
    assert np.abs(xy - slice_map.xy[rows]).max() < 0.25 * spread           # placed where its own slices are


def test_a_new_study_is_embedded_into_a_new_version(trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    live, workspace = _live(studies)
    first = live.current()
    assert first is not None and "study_new" not in first.image_set()
    version = workspace.current_version()
    make_synthetic_study(studies / "study_new.nii.gz", n_slices=7, size=32, random_state=9)
    _settle(live)
    now = live.current()
    assert now is not None and now is not first
    assert len(now.rows_of("study_new")) == now.depths["study_new"] == 7
    assert len(now) == len(first) + 7 and now.model_version == first.model_version
    assert workspace.current_version().folder != version.folder          # published, never changed in place
    assert workspace.load_map(version).image_set() == first.image_set()


def test_a_deleted_study_leaves_the_suggestions_at_once_and_the_map_at_the_next_update(
        trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    live, _ = _live(studies)
    first = live.current()
    (studies / "study_01.nii.gz").unlink()
    removed = live.removed_rows(first)
    assert sorted(removed.tolist()) == sorted(first.rows_of("study_01").tolist())
    _settle(live)
    assert "study_01" not in live.current().image_set()


def test_a_study_rewritten_with_other_content_is_stale_until_read_again(trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    live, _ = _live(studies)
    first = live.current()
    before = first.w[first.rows_of("study_02")].copy()
    assert not live.is_stale("study_02")
    shutil.copy(studies / "study_00.nii.gz", studies / "study_02.nii.gz")   # same name, other scan
    assert live.is_stale("study_02")
    _settle(live)
    now = live.current()
    assert not live.is_stale("study_02") and not live.changed
    assert not np.allclose(now.w[now.rows_of("study_02")], before)
    np.testing.assert_allclose(now.w[now.rows_of("study_02")], now.w[now.rows_of("study_00")], atol=1e-4)


def test_a_damaged_current_version_is_set_aside_and_the_previous_one_served(trained_studies: Callable[..., Path]) -> None:
    studies = trained_studies()
    live, workspace = _live(studies)
    previous = workspace.current_version()
    make_synthetic_study(studies / "study_new.nii.gz", n_slices=5, size=32, random_state=3)
    _settle(live)
    damaged = workspace.current_version()
    assert damaged.folder != previous.folder
    damaged.map_path.write_bytes(b"not a zip")
    fresh, fresh_workspace = _live(studies)   # a server started now
    slice_map = fresh.current()
    assert slice_map is not None and "study_new" not in slice_map.image_set()
    assert (workspace.root / "damaged" / damaged.folder.name).is_dir()
    assert any(damaged.folder.name in problem for problem in fresh_workspace.problems)
