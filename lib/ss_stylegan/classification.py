"""1-nearest-neighbour classification against the labelled slices, with a score and the neighbour.

Works in the 2-D map or in W (any dimension) and for any number of classes. For each query point
the classifier finds the nearest labelled point of every class (one k-d tree per class), giving
distances ``d_c``. The prediction is the class of the overall nearest labelled point (the plain
1-NN rule; exact ties go to the lowest class index) and the per-class score is inverse-distance
weighting::

    s_c = (1 / d_c) / sum_k (1 / d_k)

so the scores sum to 1, do not depend on the scale of the map, and for two classes
``s_1 = d_0 / (d_0 + d_1)``: 1 on a labelled point of class 1, 0.5 half-way. A query that sits
exactly on labelled points shares the score between the classes at distance 0. ``s_c`` is the score
to use for ROC / AUC. Fitted with a single class, every point gets that class with score 1 (the
only possible answer; a warning is logged). Fitting with no labels raises
:class:`ClassificationError`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)


class ClassificationError(ValueError):
    """Bad input to the classifier: no labels, mismatched shapes, NaN, or not fitted."""


@dataclasses.dataclass
class Prediction:
    """Per-point output of :meth:`NearestNeighbourClassifier.predict` for M query points.

    Attributes:
        labels: ``[M]`` predicted class labels (values of ``classes_``).
        class_index: ``[M]`` int, index of the predicted class in ``classes_``.
        scores: ``[M, C]`` float, per-class scores (rows sum to 1).
        score: ``[M]`` float, score of the predicted class.
        neighbour: ``[M]`` int, index (into the labelled set given to ``fit``) of the nearest
            labelled point.
        distance: ``[M]`` float, distance to that neighbour.
    """

    labels: np.ndarray
    class_index: np.ndarray
    scores: np.ndarray
    score: np.ndarray
    neighbour: np.ndarray
    distance: np.ndarray


class NearestNeighbourClassifier:
    """1-NN classifier with per-class inverse-distance scores.

    Args:
        n_jobs: worker threads for the k-d tree queries (``-1``: all cores).
    """

    def __init__(self, n_jobs: int = 1) -> None:
        self.n_jobs = n_jobs

    def fit(self, X: np.ndarray, y: Sequence[Any] | np.ndarray) -> NearestNeighbourClassifier:
        """Store the labelled points ``X`` ``[L, D]`` with labels ``y`` ``[L]``; returns ``self``."""
        X = _check_points(X, "X_labelled")
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ClassificationError(f"y must have one label per row of X: X {X.shape}, y {y.shape}")
        if X.shape[0] == 0:
            raise ClassificationError("no labelled points: label at least one slice of each class first")
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) == 1:
            log.warning("only one class (%s) is labelled: every slice will be predicted as it", self.classes_[0])
        self.X_ = np.ascontiguousarray(X, dtype=np.float64)
        self.y_ = y
        self.y_index_ = y_index.astype(np.int64)
        self._members = [np.flatnonzero(self.y_index_ == c) for c in range(len(self.classes_))]
        self._trees = [cKDTree(self.X_[m]) for m in self._members]
        return self

    def predict(self, X: np.ndarray) -> Prediction:
        """Classify ``X`` ``[M, D]``; see :class:`Prediction`."""
        if not hasattr(self, "_trees"):
            raise ClassificationError("classifier is not fitted: call fit(X_labelled, y) first")
        X = _check_points(X, "X")
        if X.shape[1] != self.X_.shape[1]:
            raise ClassificationError(f"X has {X.shape[1]} dimensions, the labelled points have {self.X_.shape[1]}")
        m, n_classes = X.shape[0], len(self.classes_)
        dist = np.empty((m, n_classes))
        nearest = np.empty((m, n_classes), dtype=np.int64)
        for c, (tree, members) in enumerate(zip(self._trees, self._members)):
            d, i = tree.query(X, k=1, workers=self.n_jobs)
            dist[:, c] = d
            nearest[:, c] = members[np.asarray(i, dtype=np.int64)] if m else i
        class_index = np.argmin(dist, axis=1) if m else np.zeros(0, dtype=np.int64)
        scores = _inverse_distance_scores(dist)
        rows = np.arange(m)
        return Prediction(
            labels=self.classes_[class_index],
            class_index=class_index,
            scores=scores,
            score=scores[rows, class_index],
            neighbour=nearest[rows, class_index],
            distance=dist[rows, class_index],
        )


def _inverse_distance_scores(dist: np.ndarray) -> np.ndarray:
    """``[M, C]`` distances -> ``[M, C]`` scores ``(1/d_c) / sum_k (1/d_k)``; zeros share the mass."""
    zero = dist <= 0.0
    with np.errstate(divide="ignore"):
        inv = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, dist))
    on_point = zero.any(axis=1)
    inv[on_point] = zero[on_point].astype(np.float64)
    total = inv.sum(axis=1, keepdims=True)
    total[total == 0.0] = 1.0
    return inv / total


def _check_points(X: Any, name: str) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ClassificationError(f"{name} must be a 2-D array [N, D], got shape {X.shape}")
    if X.size and not np.isfinite(X).all():
        raise ClassificationError(f"{name} contains NaN or infinite values")
    return X
