"""Selection and classification in the whole embedding (``ss_stylegan.selection``, ``ss_stylegan.classification.features``):
behaviour on data whose answer is known (well-separated clusters), cold and warm starts, and the shapes every
classifier answers."""

from __future__ import annotations

import numpy as np
import pytest

from ss_stylegan.classification.features import CLASSIFIERS, classify_features
from ss_stylegan.selection.features import prepare_features
from ss_stylegan.selection.fps_features import FarthestInFeatures
from ss_stylegan.selection.probcover import ProbCoverSelector, purity_radius
from ss_stylegan.selection.typiclust import TypiClustSelector, typicality


def blobs(n_per: int = 40, centres: int = 4, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``centres`` tight clusters far apart; the cluster index is the class (mod 2)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=20.0, size=(centres, dim))
    x = np.concatenate([m + rng.normal(size=(n_per, dim)) for m in means])
    return x.astype(np.float32), np.repeat(np.arange(centres), n_per)


@pytest.mark.parametrize("kind", ["standardised", "whitened"])
def test_features_are_prepared(kind: str) -> None:
    x, _ = blobs()
    f = prepare_features(x * 5 + 3, kind)
    assert f.shape[0] == x.shape[0] and np.allclose(f.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(f.std(axis=0), 1, atol=1e-2)
    with pytest.raises(ValueError, match="features must be one of"):
        prepare_features(x, "raw")


def test_typiclust_takes_one_typical_point_from_each_cluster() -> None:
    x, cluster = blobs()
    picks = TypiClustSelector(random_state=0).select(x, 4)
    assert sorted(cluster[picks]) == [0, 1, 2, 3]
    typical = typicality(x)
    for i in picks:  # the most typical point of its cluster
        members = np.flatnonzero(cluster == cluster[i])
        assert typical[i] >= np.quantile(typical[members], 0.9)
    warm = TypiClustSelector(random_state=0).select(x, 2, chosen=[int(np.flatnonzero(cluster == 0)[0]),
                                                                   int(np.flatnonzero(cluster == 1)[0])])
    assert sorted(cluster[warm]) == [2, 3]  # clusters holding a chosen point come last


def test_probcover_covers_every_cluster_and_counts_chosen_coverage() -> None:
    x, cluster = blobs()
    delta = purity_radius(x, n_classes=4)
    gaps = [np.min(np.linalg.norm(x[cluster == a][:, None] - x[cluster != a][None], axis=2)) for a in range(4)]
    # the largest radius at which 95 % of balls stay pure: past the clusters' spread, up to the gaps between them
    spread = max(np.max(np.linalg.norm(x[cluster == a] - x[cluster == a].mean(axis=0), axis=1)) for a in range(4))
    assert spread < delta <= max(gaps) + 1e-6
    selector = ProbCoverSelector(n_classes=4)
    picks = selector.select(x, 4)
    assert sorted(cluster[picks]) == [0, 1, 2, 3] and selector.radius_ == pytest.approx(delta)
    warm = ProbCoverSelector(n_classes=4).select(x, 3, chosen=picks[:1])
    assert cluster[picks[0]] not in cluster[warm] and len(set(warm)) == 3


def test_fps_in_features_matches_a_stateless_twin() -> None:
    x, _ = blobs(n_per=10)
    chosen = [3, 17]
    picks = FarthestInFeatures().select(x, 5, chosen=chosen)
    taken = list(chosen)
    for i in picks:  # each pick is the farthest from everything taken before it
        d = np.min(np.linalg.norm(x[:, None] - x[taken][None], axis=2), axis=1)
        d[taken] = -1
        assert i == int(np.argmax(d))
        taken.append(i)
    cold = FarthestInFeatures(start="central").select(x, 1)
    assert cold == [int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))]


@pytest.mark.parametrize("method", CLASSIFIERS)
def test_classifiers_answer_classes_scores_and_the_labelled_neighbour(method: str) -> None:
    x, cluster = blobs()
    y = cluster % 2
    labelled = np.array([np.flatnonzero(cluster == c)[k] for c in range(4) for k in range(2)])
    pred = classify_features(prepare_features(x), labelled, y[labelled], 3, method)
    assert (pred.labels == y).mean() == 1.0
    assert pred.scores.shape == (x.shape[0], 3) and np.allclose(pred.scores.sum(axis=1), 1.0)
    assert np.all(pred.scores[:, 2] == 0)  # a class without a label scores 0
    assert set(pred.neighbour) <= set(labelled) and (cluster[pred.neighbour] == cluster).all()
    one = classify_features(x, labelled[:2], y[labelled[:2]], 2, method)
    assert (one.labels == y[labelled[0]]).all() and np.allclose(one.scores[:, y[labelled[0]]], 1.0)
