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

:class:`NearestLabelIndex` gives the same answers for a server: it is built once per map and follows
label changes one at a time instead of being fitted again for each request.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ss_stylegan.classification.dynamic_nearest import REBUILD_AFTER, DynamicNearest
from ss_stylegan.labelling.validation import finite_points

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
    return finite_points(X, name, ClassificationError)


class NearestLabelIndex:
    """1-NN classification against the labelled points of a fixed map, kept up to date between requests.

    The same rule, scores and answer as :class:`NearestNeighbourClassifier` fitted on the labelled points,
    except that :attr:`Prediction.neighbour` is the neighbour's row of ``X`` (not a position in a fit set).
    Labels are set and removed one by one (O(1) each); every class keeps a k-d tree over its labelled
    points plus the changes since it was built (:class:`~ss_stylegan.classification.dynamic_nearest.DynamicNearest`), so a
    query never waits for a full rebuild after a label changes, only after ``rebuild_after`` changes.

    Args:
        X: the map, ``[N, D]`` (kept by reference; use the same array for every query of map points).
        rebuild_after: label changes of one class after which its k-d tree is rebuilt.

    Thread-safe: one lock guards every method.
    """

    def __init__(self, X: np.ndarray, rebuild_after: int = REBUILD_AFTER) -> None:
        self.X = np.ascontiguousarray(_check_points(X, "X"), dtype=np.float64)
        self.rebuild_after = rebuild_after
        self._lock = threading.RLock()
        self._class_of = np.full(self.X.shape[0], -1, dtype=np.int64)   # position in _names, -1: unlabelled
        self._names: list[Any] = []
        self._members: list[DynamicNearest] = []

    @property
    def classes_(self) -> np.ndarray:
        """The classes that have at least one labelled point, sorted (as ``np.unique`` sorts them)."""
        with self._lock:
            return np.asarray(sorted(n for n, m in zip(self._names, self._members) if len(m)))

    @property
    def n_labelled(self) -> int:
        return int(sum(len(m) for m in self._members))

    def set_labels(self, rows: Sequence[int] | np.ndarray, labels: Sequence[Any] | np.ndarray) -> None:
        """Label (or relabel) map rows ``rows`` ``[K]`` with ``labels`` ``[K]``."""
        rows = self._rows(rows)
        labels = np.asarray(labels)
        if labels.shape != rows.shape:
            raise ClassificationError(f"one label per row is needed: {rows.shape[0]} rows, labels {labels.shape}")
        with self._lock:
            self.remove_labels(rows)
            names, inverse = np.unique(labels, return_inverse=True)
            for name, part in zip(names.tolist(), np.split(rows[np.argsort(inverse, kind="stable")],
                                                           np.cumsum(np.bincount(inverse))[:-1])):
                c = self._class_id(name)
                self._members[c].add(part)
                self._class_of[part] = c

    def remove_labels(self, rows: Sequence[int] | np.ndarray) -> None:
        """Forget the labels of ``rows`` (rows without a label are ignored)."""
        rows = self._rows(rows)
        with self._lock:
            labelled = rows[self._class_of[rows] >= 0]
            for c in np.unique(self._class_of[labelled]).tolist():
                self._members[c].remove(labelled[self._class_of[labelled] == c])
            self._class_of[labelled] = -1

    def predict(self, X: np.ndarray) -> Prediction:
        """Classify points ``X`` ``[M, D]`` of the map's space; see :class:`Prediction` (neighbour: a row of the map)."""
        X = _check_points(X, "X")
        if X.shape[1] != self.X.shape[1]:
            raise ClassificationError(f"X has {X.shape[1]} dimensions, the map has {self.X.shape[1]}")
        with self._lock:
            present = sorted((n, c) for c, n in enumerate(self._names) if len(self._members[c]))
            if not present:
                raise ClassificationError("no labelled points: label at least one slice of each class first")
            dist = np.empty((X.shape[0], len(present)))
            nearest = np.empty((X.shape[0], len(present)), dtype=np.int64)
            for k, (_, c) in enumerate(present):
                dist[:, k], nearest[:, k] = self._members[c].query(X)
        classes = np.asarray([n for n, _ in present])
        class_index = np.argmin(dist, axis=1) if X.shape[0] else np.zeros(0, dtype=np.int64)
        scores = _inverse_distance_scores(dist)
        rows = np.arange(X.shape[0])
        return Prediction(labels=classes[class_index], class_index=class_index, scores=scores,
                          score=scores[rows, class_index], neighbour=nearest[rows, class_index],
                          distance=dist[rows, class_index])

    def _class_id(self, name: Any) -> int:
        if name not in self._names:
            self._names.append(name)
            self._members.append(DynamicNearest(self.X, rebuild_after=self.rebuild_after))
        return self._names.index(name)

    def _rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows).reshape(-1)
        if rows.size and (not np.issubdtype(rows.dtype, np.integer) or rows.min() < 0 or rows.max() >= len(self.X)):
            raise ClassificationError(f"rows must be integer rows of the map [0, {len(self.X)}), got {rows[:5]}...")
        return rows.astype(np.int64)
