"""Choosing and classifying in the whole of W as the server does (issue 19): the feature space, TypiClust's and
ProbCover's indexes, the classifiers fitted per label state, and the pipeline settings.

The data are W-like vectors with known structure (Gaussian clusters of known sizes in 128 dimensions), so what a
strategy must pick (the most typical slice of the largest uncovered cluster; the densest uncovered ball) and what a
classifier must answer are known.
"""

from __future__ import annotations

import numpy as np
import pytest

from ss_stylegan.classification.online import FEATURE_CLASSIFIERS, FeatureClassifiers
from ss_stylegan.config import ConfigError
from ss_stylegan.labelling.methods import (
    CLASSIFIERS,
    DEFAULT_CLASSIFIER,
    DEFAULT_STRATEGY,
    STRATEGIES,
    pipeline_setting,
    pipelines_info,
)
from ss_stylegan.selection.feature_space import FeatureSpace, nearest_rows
from ss_stylegan.selection.online import LADDER, CoverageIndex, TypiClustIndex
from ss_stylegan.selection.typiclust import typicality


def clusters(sizes: tuple[int, ...], dim: int = 128, spread: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=12.0, size=(len(sizes), dim))
    w = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)]).astype(np.float32)
    y = np.repeat(np.arange(len(sizes)), sizes)
    return w, y


def test_nearest_rows_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    refs, queries = rng.normal(size=(300, 8)), rng.normal(size=(50, 8))
    index, dist = nearest_rows(queries, refs, 5)
    full = np.linalg.norm(queries[:, None] - refs[None], axis=2)
    np.testing.assert_array_equal(index, np.argsort(full, axis=1)[:, :5])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :5], rtol=1e-4, atol=1e-4)
    own, _ = nearest_rows(refs, refs, 3, exclude_self=True)
    assert not (own == np.arange(300)[:, None]).any()


def test_the_feature_space_keeps_standardised_distances_and_bounds_the_anchors() -> None:
    w, _ = clusters((400, 300, 300), dim=16)
    small = FeatureSpace(w)
    assert small.components is None and small.kept_variance == 1.0 and small.n_anchors == 1000
    z = (w - w.mean(axis=0)) / w.std(axis=0)
    np.testing.assert_allclose(np.linalg.norm(small.x[0] - small.x[1]), np.linalg.norm(z[0] - z[1]), rtol=1e-4)
    wide, _ = clusters((3000, 2000, 1000), dim=128)
    space = FeatureSpace(wide, max_anchors=2000)
    assert space.x.shape == (6000, 32) and 0.5 < space.kept_variance <= 1.0
    assert space.n_anchors == 2000 and (space.anchor_of[space.anchors] == np.arange(2000)).all()
    np.testing.assert_allclose(space.transform(wide[:10]), space.x[:10], atol=1e-5)
    # with every slice an anchor, typicality is TypiClust's own (inverse mean distance to 20 neighbours)
    np.testing.assert_allclose(small.typicality, typicality(small.x, 20), rtol=1e-3)


def test_typiclust_picks_the_most_typical_slice_of_the_largest_uncovered_cluster() -> None:
    w, y = clusters((600, 300, 100), spread=0.5)
    space = FeatureSpace(w)
    index = TypiClustIndex(space)
    cold = index.select([], count=3)
    assert [int(y[p.index]) for p in cold] == [0, 1, 2]  # largest cluster first, one pick per cluster
    first = cold[0].index
    members = np.flatnonzero(y == 0)
    assert first == members[np.argmax(space.typicality[space.anchor_of[members]])]
    assert "largest cluster of W with no labelled" in cold[0].reason
    warm = index.select(chosen=members[:5].tolist(), count=1)   # cluster 0 is covered: the next largest
    assert int(y[warm[0].index]) == 1
    again = index.select(chosen=members[:5].tolist(), count=1)  # the same chosen set: the same pick
    assert again[0].index == warm[0].index
    excluded = np.sort(np.flatnonzero(y == 1))                   # a study that left the folder
    assert int(y[index.select(members[:5].tolist(), 1, excluded)[0].index]) == 2
    assert index.level_for(7).n_clusters == min(k for k in LADDER if k >= 7)


def test_probcover_covers_before_it_repeats_and_keeps_its_state_exact() -> None:
    w, y = clusters((500, 300, 200), spread=0.6)
    space = FeatureSpace(w)
    index = CoverageIndex(space, n_classes=3)
    picks = index.select([], count=3)
    assert sorted(int(y[p.index]) for p in picks) == [0, 1, 2]  # one ball per cluster before a second
    assert "δ-ball" in picks[0].reason
    fresh = CoverageIndex(space, n_classes=3)
    chosen = [p.index for p in picks[:2]]
    # a released reservation is uncovered again: the state equals one built from scratch for the same set
    index.select(chosen, count=0)
    fresh.select(chosen, count=0)
    np.testing.assert_array_equal(index.cover, fresh.cover)
    np.testing.assert_array_equal(index.gain, fresh.gain)


@pytest.mark.parametrize("method", FEATURE_CLASSIFIERS)
def test_each_classifier_answers_scores_that_sum_to_one_and_the_nearest_label(method: str) -> None:
    w, y = clusters((300, 300, 200), spread=0.8, seed=3)
    space = FeatureSpace(w)
    classifiers = FeatureClassifiers(space)
    rows = np.concatenate([np.flatnonzero(y == c)[:3] for c in range(3)])
    fit = classifiers.fit(method, rows, y[rows], n_classes=3)
    scores = classifiers.scores(fit, space.x)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-9)
    assert (scores.argmax(axis=1) == y).mean() > 0.95   # three labels per class of well-separated clusters
    neighbour, distance = classifiers.nearest_labelled(fit, space.x[:5])
    assert set(neighbour.tolist()) <= set(rows.tolist()) and (distance >= 0).all()
    assert neighbour[0] == rows[0] and distance[0] == pytest.approx(0.0, abs=1e-3)
    one = classifiers.fit(method, rows[:2], y[rows[:2]], n_classes=3)   # one class labelled: every slice gets it
    assert (classifiers.scores(one, space.x[:10])[:, 0] == 1.0).all()


def test_pipeline_settings_and_what_info_lists() -> None:
    assert pipeline_setting(None, None, None) == (DEFAULT_STRATEGY, DEFAULT_CLASSIFIER) == ("typiclust", "nn_map")
    assert pipeline_setting("paper", None, None) == ("fps", "nn_map")
    assert pipeline_setting("paper", None, "logistic") == ("fps", "logistic")
    for bad, words in ((("fast", None, None), "pipeline must be one of"), ((None, "kmeans", None), "strategy must"),
                       ((None, None, "svm"), "classifier must be one of")):
        with pytest.raises(ConfigError, match=words):
            pipeline_setting(*bad)
    info = pipelines_info("typiclust", "nn_map")
    assert list(info["strategies"]) == list(STRATEGIES) and list(info["classifiers"]) == list(CLASSIFIERS)
    assert info["strategies"]["fps"]["route"] == "/activelearning/fps" and info["strategies"]["fps"]["space"] == "map"
    assert info["pipelines"]["paper"] == {"strategy": "fps", "classifier": "nn_map"}


def test_random_picks_for_a_server_avoid_taken_and_excluded_rows_and_repeat_from_their_seed() -> None:
    from ss_stylegan.selection.random_pick import random_free

    points = np.random.default_rng(0).normal(size=(1000, 2))
    taken, excluded = np.arange(0, 1000, 2), np.arange(1, 200, 2)        # every even row, and 100 odd ones
    picks = random_free(points, taken, excluded, 50, random_state=3)
    rows = [p.index for p in picks]
    assert len(set(rows)) == 50 and all(r % 2 == 1 and r >= 200 for r in rows)
    assert rows == [p.index for p in random_free(points, taken, excluded, 50, random_state=3)]
    nearest = np.sqrt(((points[taken] - points[rows[0]]) ** 2).sum(axis=1)).min()
    assert picks[0].distance == pytest.approx(nearest) and picks[0].reason == "random pick (baseline)"
    almost = np.setdiff1d(np.arange(1000), [997, 999])                     # two free rows left: found anyway
    assert sorted(p.index for p in random_free(points, almost, np.zeros(0, np.int64), 5, 1)) == [997, 999]
