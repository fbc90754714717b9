"""The grid of pipelines the evaluation scores for one embedding: selections x classifiers, same seeds.

The paper's pipeline chooses by farthest point sampling in the 2-D t-SNE map and classifies by 1-NN in the
map (``fps``, and ``random`` as its baseline). Beside it (issue 19), in the whole embedding (features from
:func:`ss_stylegan.selection.features.prepare_features`): selection by farthest points in the features (``fps_w``),
TypiClust and ProbCover, and classification by label spreading, logistic regression and cosine k-NN. Every
selection is scored with every classifier; the paper's pipelines keep their names (``<embedding> + fps``),
the others are ``<embedding> + <selection> + <classifier>`` (``nn_map`` for 1-NN in the map).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ss_stylegan.classification.features import CLASSIFIERS, classify_features
from ss_stylegan.selection.fps import FarthestPointSelector
from ss_stylegan.selection.fps_features import FarthestInFeatures
from ss_stylegan.selection.probcover import ProbCoverSelector
from ss_stylegan.selection.random_pick import RandomSelector
from ss_stylegan.selection.feature_space import FeatureSpace
from ss_stylegan.selection.online import TypiClustIndex
from ss_stylegan.selection.typiclust import TypiClustSelector

MAP_SELECTIONS = ("fps", "random")
FEATURE_SELECTIONS = ("fps_w", "typiclust", "probcover", "typiclust_server")
ALL_CLASSIFIERS = ("nn_map", *CLASSIFIERS)


def method_name(embedding: str, selection: str, classifier: str) -> str:
    if classifier == "nn_map" and selection in MAP_SELECTIONS:
        return f"{embedding} + {selection}"  # the paper's pipeline (and its random baseline), as before
    return f"{embedding} + {selection} + {classifier}"


def selections(points: np.ndarray, features: np.ndarray, ks: Sequence[int], n_classes: int, seed: int,
               fps_start: str, grid: bool) -> Iterator[tuple[str, int, np.ndarray]]:
    """``(selection, k, labelled indices)`` for every selection and k; cold starts from the same seed.

    FPS, fps_w and ProbCover are greedy, so the picks for a smaller k are the first of the largest; TypiClust
    clusters into as many clusters as labels, so it runs once per k; the server's TypiClust (``typiclust_server``)
    picks one at a time, so its first k picks are its answer for k."""
    kmax = max(ks)
    orders = {"fps": [p.index for p in FarthestPointSelector(start=fps_start, random_state=seed).select(
                  points, count=kmax)],
              "random": [p.index for p in RandomSelector(random_state=seed).select(points, count=kmax)]}
    if grid:
        orders["fps_w"] = FarthestInFeatures(random_state=seed, start="random" if fps_start == "random"
                                             else "central").select(features, kmax)
        orders["probcover"] = ProbCoverSelector(n_classes=n_classes, random_state=seed).select(features, kmax)
        orders["typiclust_server"] = server_typiclust(features, kmax, seed)
    for name, order in orders.items():
        for k in ks:
            yield name, k, np.asarray(order[:k], dtype=np.int64)
    if grid:
        for k in ks:
            yield "typiclust", k, np.asarray(TypiClustSelector(random_state=seed).select(features, k), dtype=np.int64)


def server_typiclust(features: np.ndarray, count: int, seed: int) -> list[int]:
    """TypiClust as the server runs it (:class:`~ss_stylegan.selection.online.TypiClustIndex` over a
    :class:`~ss_stylegan.selection.feature_space.FeatureSpace`), one pick at a time, each label counted before the
    next pick: what an annotator labelling the server's suggestions gets."""
    index = TypiClustIndex(FeatureSpace(features, random_state=seed), random_state=seed)
    picks: list[int] = []
    for _ in range(count):
        picks += [p.index for p in index.select(picks, 1)]
    return picks


MapClassifier = Callable[[np.ndarray, np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def predictions(points: np.ndarray, features: np.ndarray, labels: np.ndarray, labelled: np.ndarray,
                n_classes: int, seed: int, grid: bool, map_classifier: MapClassifier
                ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(classifier, class index [N], scores [N, C])`` of every point for each classifier; ``map_classifier``
    is the paper's 1-NN in the map (``(points, labels, labelled, n_classes) -> (classes, scores)``)."""
    yield ("nn_map", *map_classifier(points, labels, labelled, n_classes))
    if grid:
        for name in CLASSIFIERS:
            pred = classify_features(features, labelled, labels[labelled], n_classes, name, random_state=seed)
            yield name, pred.labels, pred.scores
