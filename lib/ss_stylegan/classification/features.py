"""Classifying every slice from a few labelled ones in the whole embedding, not only 1-NN in the 2-D map.

On a frozen self-supervised embedding with 5-10 labels per class, linear and graph classifiers on the full
features beat nearest neighbours (issue 19; the DINO few-label medical study, arXiv 2304.05163):

- ``label_spreading`` -- label spreading on a k-NN graph of all slices (:mod:`.spreading`);
- ``logistic`` -- logistic regression with balanced class weights (:mod:`.logistic`);
- ``knn_cosine`` -- k nearest labelled neighbours by cosine distance, weighted by similarity (:mod:`.knn_cosine`).

Each answers a class per slice, per-class scores that sum to 1, and the labelled slice nearest to it in the
features (the clinician's "why": the labelled example the answer resembles most). Features come from
:func:`ss_stylegan.selection.features.prepare_features`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.neighbors import NearestNeighbors

from ss_stylegan.classification.knn_cosine import knn_cosine_scores
from ss_stylegan.classification.logistic import logistic_scores
from ss_stylegan.classification.spreading import label_spreading_scores

CLASSIFIERS = ("label_spreading", "logistic", "knn_cosine")


@dataclasses.dataclass(frozen=True)
class FeaturePrediction:
    """Answers for every slice.

    Attributes:
        labels: ``[N]`` predicted class index.
        scores: ``[N, C]`` per-class scores (rows sum to 1; a class without a label scores 0).
        neighbour: ``[N]`` index of the nearest labelled slice in the features (the "why").
        distance: ``[N]`` its Euclidean distance.
    """

    labels: np.ndarray
    scores: np.ndarray
    neighbour: np.ndarray
    distance: np.ndarray


def classify_features(x: np.ndarray, labelled: np.ndarray, y: np.ndarray, n_classes: int, method: str,
                      random_state: int = 0, n_neighbours: int = 10) -> FeaturePrediction:
    """Classify every row of ``x`` from the labels ``y`` of rows ``labelled``.

    Args:
        x: ``[N, D]`` features (prepared).
        labelled: ``[L]`` indices of the labelled rows.
        y: ``[L]`` their class indices (0..n_classes-1).
        n_classes: number of classes (scores have one column each).
        method: one of :data:`CLASSIFIERS`.
    """
    labelled = np.asarray(labelled, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    present = np.unique(y)
    if method not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {method!r}")
    if present.size == 1:
        scores = np.zeros((x.shape[0], n_classes))
        scores[:, present[0]] = 1.0
    elif method == "label_spreading":
        scores = label_spreading_scores(x, labelled, y, n_classes, n_neighbours)
    elif method == "logistic":
        scores = logistic_scores(x, labelled, y, n_classes, random_state)
    else:
        scores = knn_cosine_scores(x, labelled, y, n_classes)
    near_dist, near = NearestNeighbors(n_neighbors=1).fit(x[labelled]).kneighbors(x)
    return FeaturePrediction(labels=np.argmax(scores, axis=1), scores=scores, neighbour=labelled[near[:, 0]],
                             distance=near_dist[:, 0])
