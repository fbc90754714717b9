"""t-SNE projector: new points land in their cluster; save/load round-trips without pickle."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ss_stylegan.maps.projection import (
    ModelVersionMismatch,
    ProjectionError,
    TSNEProjector,
)


def _clusters(per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 24)) * 8
    noise = np.random.default_rng(seed)
    X = np.concatenate([c + noise.normal(size=(per, 24)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(4), per)


@pytest.fixture(scope="module")
def fitted() -> tuple[TSNEProjector, np.ndarray, np.ndarray]:
    X, y = _clusters(60, seed=1)
    return TSNEProjector(n_iter=250, random_state=0).fit(X, model_version="v1"), X, y


def test_fit_shapes_and_clusters(fitted: tuple[TSNEProjector, np.ndarray, np.ndarray]) -> None:
    proj, X, y = fitted
    e = proj.embedding_
    assert e.shape == (len(X), 2)
    d = np.linalg.norm(e[:, None] - e[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(axis=1)] == y).mean() > 0.95


def test_transform_places_held_out_points_in_their_cluster(fitted: tuple[TSNEProjector, np.ndarray, np.ndarray]) -> None:
    proj, _, y = fitted
    before = proj.embedding_
    X_new, y_new = _clusters(15, seed=2)
    z = proj.transform(X_new)
    assert z.shape == (len(X_new), 2)
    d = np.linalg.norm(z[:, None] - before[None], axis=2)
    assert (y[d.argmin(axis=1)] == y_new).mean() > 0.9
    np.testing.assert_array_equal(proj.embedding_, before)   # the reference map never moves


def test_save_load_round_trip_without_pickle(fitted: tuple[TSNEProjector, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    proj, _, _ = fitted
    X_new, _ = _clusters(5, seed=3)
    proj.save(tmp_path)
    with np.load(tmp_path / "tsne_map.npz", allow_pickle=False) as d:   # plain arrays only
        assert all(d[k].dtype != object for k in d.files)
    assert zipfile.is_zipfile(tmp_path / "tsne_map.npz")
    meta = json.loads((tmp_path / "tsne_map.json").read_text(encoding="utf-8"))
    assert meta["model_version"] == "v1" and meta["n_points"] == 240
    loaded = TSNEProjector.load(tmp_path, model_version="v1")
    np.testing.assert_array_equal(loaded.embedding_, proj.embedding_)
    np.testing.assert_allclose(loaded.transform(X_new), proj.transform(X_new))
    assert loaded.get_params() == proj.get_params()
    with pytest.raises(ModelVersionMismatch, match="v1"):
        TSNEProjector.load(tmp_path, model_version="v2")
    with pytest.raises(ProjectionError, match="no saved"):
        TSNEProjector.load(tmp_path / "missing")


def test_tiny_n_clamps_perplexity_and_bad_input() -> None:
    X, _ = _clusters(2, seed=4)   # 8 points
    proj = TSNEProjector(perplexity=30, n_iter=100).fit(X)
    assert proj.perplexity_ == pytest.approx(7 / 3)
    assert proj.transform(X[:2]).shape == (2, 2)
    with pytest.raises(ProjectionError, match="at least 4"):
        TSNEProjector().fit(X[:3])
    with pytest.raises(ProjectionError, match="dimensions"):
        proj.transform(np.zeros((1, 5)))
    with pytest.raises(ProjectionError, match="NaN"):
        TSNEProjector().fit(np.full((10, 3), np.nan))
    with pytest.raises(ProjectionError, match="not fitted"):
        TSNEProjector().transform(X)


def test_fit_on_a_sample_places_the_rest_like_new_points(tmp_path: Path) -> None:
    """Above max_fit_points the map is fitted on a seeded sample; every other row is placed with transform
    (the same answer as placing it later), batch by batch from a memory map, and lands in its cluster."""
    X, y = _clusters(100, seed=5)                                    # 400 points, 4 clusters
    np.save(tmp_path / "w.npy", X)
    W = np.load(tmp_path / "w.npy", mmap_mode="r")
    seen: list[tuple[int, int]] = []
    proj = TSNEProjector(n_iter=250, random_state=0, max_fit_points=120)
    xy = proj.fit_transform(W, model_version="v1", progress=lambda done, total: seen.append((done, total)))
    sample = proj.sample_indices_
    assert xy.shape == (400, 2) and len(sample) == 120 and len(np.unique(sample)) == 120
    assert proj.reference_.shape == (120, 24) and seen[-1] == (280, 280)
    np.testing.assert_array_equal(xy[sample], proj.embedding_)
    rest = np.setdiff1d(np.arange(400), sample)
    np.testing.assert_allclose(xy[rest[:30]], proj.transform(X[rest[:30]]))    # batch composition does not matter
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(axis=1)] == y).mean() > 0.95
    again = TSNEProjector(n_iter=250, random_state=0, max_fit_points=120).fit(X)
    np.testing.assert_array_equal(again.sample_indices_, sample)     # the sample is seeded by random_state
    proj.save(tmp_path / "map")
    assert TSNEProjector.load(tmp_path / "map").get_params()["max_fit_points"] == 120
    assert TSNEProjector(max_fit_points=None).get_params()["max_fit_points"] is None
    with pytest.raises(ProjectionError, match="max_fit_points"):
        TSNEProjector(max_fit_points=2).fit(X)
