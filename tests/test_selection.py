"""Farthest point sampling and the random baseline on small hand-made point sets."""

from __future__ import annotations

import numpy as np
import pytest

from ss_stylegan.config import derive_seed
from ss_stylegan.selection.fps import FarthestPointSelector, SelectionError
from ss_stylegan.selection.random_pick import RandomSelector


def _clusters(n_clusters: int = 5, per: int = 40, dim: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.stack([np.array([np.cos(a), np.sin(a)]) * 100 for a in np.linspace(0, 2 * np.pi, n_clusters, endpoint=False)])
    if dim > 2:
        centres = np.concatenate([centres, rng.normal(size=(n_clusters, dim - 2)) * 100], axis=1)
    X = np.concatenate([c + rng.normal(size=(per, dim)) for c in centres])
    return X, np.repeat(np.arange(n_clusters), per)


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("start", ["random", "central", "farthest"])
def test_fps_covers_every_cluster_before_a_second_pick(dim: int, start: str) -> None:
    X, cluster = _clusters(dim=dim)
    picks = FarthestPointSelector(start=start, random_state=3).select(X, count=5)
    assert sorted(cluster[[p.index for p in picks]]) == [0, 1, 2, 3, 4]
    assert picks[0].distance is None
    assert all(p.distance > 50 for p in picks[1:])


def test_seeded_by_labelled_and_pending() -> None:
    X, cluster = _clusters()
    labelled = np.flatnonzero(cluster < 2)          # clusters 0 and 1 fully labelled
    pending = [int(np.flatnonzero(cluster == 2)[0])]
    picks = FarthestPointSelector().select(X, labelled=labelled, pending=pending, count=2)
    picked = [p.index for p in picks]
    assert not set(picked) & (set(labelled.tolist()) | set(pending))
    assert sorted(cluster[picked]) == [3, 4]
    # the first pick is the point farthest from every seed
    seeds = np.concatenate([labelled, pending])
    d = np.linalg.norm(X[:, None] - X[seeds][None], axis=2).min(axis=1)
    d[seeds] = -1
    assert picks[0].index == int(np.argmax(d))
    assert picks[0].distance == pytest.approx(d.max())


def test_batch_equals_repeated_single_picks() -> None:
    X, _ = _clusters(seed=1)
    for selector in (FarthestPointSelector(start="random", random_state=5), RandomSelector(random_state=5)):
        batch = [p.index for p in selector.select(X, labelled=[0, 1], count=12)]
        pending: list[int] = []
        for _ in range(12):
            pending.append(selector.select(X, labelled=[0, 1], pending=pending, count=1)[0].index)
        assert batch == pending
        assert len(set(batch)) == 12


def test_duplicates_come_last_and_nothing_is_picked_twice() -> None:
    X = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 0.0], [1.0, 0.0]])
    picks = FarthestPointSelector().select(X, labelled=[0], count=10)
    assert [p.index for p in picks] == [3, 4, 1, 2]   # duplicates of the labelled point last, ties -> low index
    assert [p.distance for p in picks] == [5.0, 1.0, 0.0, 0.0]


def test_first_pick_is_reproducible_and_depends_on_seed() -> None:
    X, _ = _clusters()
    a = [FarthestPointSelector(start="random", random_state=s).select(X)[0].index for s in (0, 0, 1, 2, 3)]
    assert a[0] == a[1]
    assert len(set(a)) > 1


def test_nothing_left_returns_fewer_or_none() -> None:
    X = np.arange(8, dtype=float).reshape(4, 2)
    assert FarthestPointSelector().select(X, labelled=[0, 1, 2, 3]) == []
    assert len(RandomSelector().select(X, labelled=[0, 1], count=5)) == 2
    assert FarthestPointSelector().select(X, count=0) == []


def test_excluded_points_are_never_picked_and_do_not_repel() -> None:
    X, cluster = _clusters()
    labelled = np.flatnonzero(cluster == 0)
    gone = np.flatnonzero(cluster == 1)           # e.g. the slices of a deleted study
    picks = FarthestPointSelector().select(X, labelled=labelled, exclude=gone, count=len(X))
    picked = [p.index for p in picks]
    assert not set(picked) & set(gone.tolist()) and len(picked) == len(X) - 80
    # cluster 1 is not a centre: its neighbours are judged by their distance to cluster 0 only
    d = np.linalg.norm(X[:, None] - X[labelled][None], axis=2).min(axis=1)
    d[np.concatenate([labelled, gone])] = -1
    assert picked[0] == int(np.argmax(d)) and picks[0].distance == pytest.approx(d.max())
    # on a line: 0 labelled, 20 deleted. Excluded, 20 repels nothing: 11 is farthest from 0. As a
    # centre (pending), 20 would make 10 the farthest instead.
    line = np.array([[0.0], [10.0], [11.0], [20.0]])
    assert [(p.index, p.distance) for p in FarthestPointSelector().select(line, labelled=[0], exclude=[3], count=5)] \
        == [(2, 11.0), (1, 1.0)]
    assert FarthestPointSelector().select(line, labelled=[0], pending=[3])[0].index == 1
    # the random baseline skips them too, and an excluded labelled point is not a centre either
    rnd = [p.index for p in RandomSelector(random_state=1).select(X, exclude=gone, count=len(X))]
    assert len(rnd) == len(X) - 40 and not set(rnd) & set(gone.tolist())
    only = FarthestPointSelector(start="central").select(X[:3], labelled=[0], exclude=[0], count=1)
    assert only[0].distance is None  # nothing left to be far from: a first pick


def test_derived_seeds_are_repeatable_and_distinct_per_call() -> None:
    assert derive_seed(0, 0) == derive_seed(0, 0)
    assert len({derive_seed(0, k) for k in range(50)}) == 50
    assert derive_seed(0, 1) != derive_seed(1, 1)
    X, _ = _clusters()
    runs = [[RandomSelector(random_state=derive_seed(7, k)).select(X)[0].index for k in range(5)] for _ in range(2)]
    assert runs[0] == runs[1] and len(set(runs[0])) > 1
    with pytest.raises(ValueError, match="seed key"):
        derive_seed(0, -1)


def test_bad_input_is_a_typed_error() -> None:
    X = np.zeros((4, 2))
    with pytest.raises(SelectionError, match="outside"):
        FarthestPointSelector().select(X, labelled=[4])
    with pytest.raises(SelectionError, match="count"):
        FarthestPointSelector().select(X, count=-1)
    with pytest.raises(SelectionError, match="NaN"):
        FarthestPointSelector().select(np.full((3, 2), np.nan))
    with pytest.raises(SelectionError, match="start"):
        FarthestPointSelector(start="middle").select(X)
    with pytest.raises(SelectionError, match="exclude"):
        RandomSelector().select(X, exclude=[9])
