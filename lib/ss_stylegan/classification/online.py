"""The whole-embedding classifiers for a server: fitted once per label state, asked for any slices.

The evaluation's classifiers (:mod:`.features`) fit and predict every slice at once. A server answers a study (300
slices) or the map, and its labels change one at a time, so here a fit depends only on the labels (O(labels), or
O(anchors) for label spreading) and a prediction only on the slices asked for:

- ``logistic``: logistic regression with balanced class weights on the labelled slices' features;
- ``knn_cosine``: the 5 nearest labelled slices by cosine distance, votes weighted by similarity;
- ``label_spreading``: label spreading on the k-NN graph of the anchors
  (:class:`~ss_stylegan.selection.feature_space.FeatureSpace`; every anchor when the map has at most 20,000
  slices), each labelled slice seeding its own anchor or its nearest one; a slice's scores are those of its
  nearest anchors, weighted by inverse distance. The graph is bounded by the anchors, so its memory does not grow
  with the map.

Every answer has, per slice, the class, per-class scores summing to 1, and the labelled slice nearest in the
features (the clinician's "why").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression

from ss_stylegan.classification.knn_cosine import K as COSINE_K
from ss_stylegan.selection.feature_space import N_NEAR, FeatureSpace, nearest_rows

FEATURE_CLASSIFIERS = ("label_spreading", "logistic", "knn_cosine")
SPREAD_ALPHA = 0.8
SPREAD_ITERATIONS = 30
CHUNK = 16_384


@dataclasses.dataclass(frozen=True)
class FittedClassifier:
    """A classifier fitted to one label state: ``rows`` (map rows) labelled ``y`` (class numbers)."""

    method: str
    rows: np.ndarray
    y: np.ndarray
    n_classes: int
    model: Any


class FeatureClassifiers:
    """The whole-embedding classifiers over one map's feature space.

    Args:
        space: the map's feature space.
        random_state: logistic regression's seed.
    """

    def __init__(self, space: FeatureSpace, random_state: int = 0) -> None:
        self.space = space
        self.random_state = random_state
        self._graph: sparse.csr_matrix | None = None

    def fit(self, method: str, rows: np.ndarray, y: np.ndarray, n_classes: int) -> FittedClassifier:
        """Fit ``method`` (:data:`FEATURE_CLASSIFIERS`) to the labelled rows ``rows`` of classes ``y``."""
        if method not in FEATURE_CLASSIFIERS:
            raise ValueError(f"classifier must be one of {FEATURE_CLASSIFIERS}, got {method!r}")
        rows = np.asarray(rows, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        present = np.unique(y)
        model: Any = None
        if present.size < 2:
            model = int(present[0]) if present.size else 0
        elif method == "logistic":
            model = LogisticRegression(class_weight="balanced", C=1.0, max_iter=2000,
                                       random_state=self.random_state).fit(self.space.x[rows], y)
        elif method == "knn_cosine":
            x = self.space.x[rows]
            model = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        else:
            model = self._spread(rows, y, n_classes)
        return FittedClassifier(method, rows, y, n_classes, model)

    def scores(self, fitted: FittedClassifier, x: np.ndarray, near: tuple[np.ndarray, np.ndarray] | None = None
               ) -> np.ndarray:
        """``[M, n_classes]`` scores of feature rows ``x`` (rows sum to 1); ``near`` is their nearest anchors when
        known (the map's own rows), else found here. Computed :data:`CHUNK` rows at a time, so the memory of the
        whole map's answer is its scores, not rows x labels (a million slices against 1,700 labels: 7 GB)."""
        if len(x) <= CHUNK:
            return self._scores(fitted, x, near)
        return np.concatenate([self._scores(fitted, x[i:i + CHUNK],
                                            None if near is None else (near[0][i:i + CHUNK], near[1][i:i + CHUNK]))
                               for i in range(0, len(x), CHUNK)])

    def _scores(self, fitted: FittedClassifier, x: np.ndarray, near: tuple[np.ndarray, np.ndarray] | None
                ) -> np.ndarray:
        m, c = len(x), fitted.n_classes
        if isinstance(fitted.model, int):          # one class labelled: every slice gets it
            out = np.zeros((m, c))
            out[:, fitted.model] = 1.0
            return out
        if fitted.method == "logistic":
            out = np.zeros((m, c))
            out[:, fitted.model.classes_] = fitted.model.predict_proba(x)
            return out / out.sum(axis=1, keepdims=True)   # float32 features: sums exactly 1 in float64
        if fitted.method == "knn_cosine":
            q = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            sim = q @ fitted.model.T                               # [M, L] cosine similarity
            k = min(COSINE_K, sim.shape[1])
            idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            weight = np.clip(np.take_along_axis(sim, idx, axis=1), 1e-6, None)
            out = np.zeros((m, c))
            for cls in np.unique(fitted.y):
                out[:, cls] = (weight * (fitted.y[idx] == cls)).sum(axis=1)
            return out / out.sum(axis=1, keepdims=True)
        index, dist = near if near is not None else self.space.nearest_anchors(x)
        weight = 1.0 / (dist.astype(np.float64) + 1e-6)
        out = (fitted.model[index] * weight[:, :, None]).sum(axis=1)
        total = out.sum(axis=1, keepdims=True)
        fallback = np.zeros(c)
        fallback[np.unique(fitted.y)] = 1.0 / np.unique(fitted.y).size
        return np.where(total > 0, out / np.maximum(total, 1e-300), fallback)

    def nearest_labelled(self, fitted: FittedClassifier, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The labelled row nearest to each feature row, and its distance (the "why")."""
        index, dist = nearest_rows(x, self.space.x[fitted.rows], 1)
        return fitted.rows[index[:, 0]], dist[:, 0]

    # -- label spreading on the anchors' graph -------------------------------------------------------------
    def _anchor_graph(self) -> sparse.csr_matrix:
        """The anchors' symmetric k-NN graph, normalised (D^-1/2 W D^-1/2)."""
        if self._graph is None:
            anchors = self.space.anchor_x
            k = min(N_NEAR, max(1, len(anchors) - 1))
            index, _ = nearest_rows(anchors, anchors, k, exclude_self=True)
            n = len(anchors)
            rows = np.repeat(np.arange(n), index.shape[1])
            cols = index.reshape(-1).astype(np.int64)
            pairs = np.unique(np.concatenate([rows * n + cols, cols * n + rows]))   # symmetric, no duplicates
            src, dst = pairs // n, pairs % n
            degree = np.bincount(src, minlength=n).astype(np.float64)
            weight = 1.0 / np.sqrt(np.maximum(degree[src] * degree[dst], 1.0))
            self._graph = sparse.csr_matrix((weight, (src, dst)), shape=(n, n))
        return self._graph

    def _spread(self, rows: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Scores of every anchor after label spreading (rows sum to 1 where anything reached)."""
        graph = self._anchor_graph()
        n = self.space.n_anchors
        seeds = self.space.anchor_of[rows].astype(np.int64)
        if (seeds < 0).any():  # a labelled slice that is not an anchor seeds its nearest anchor
            seeds[seeds < 0] = self.space.near_of_rows(rows[seeds < 0], 1)[0][:, 0]
        target = np.zeros((n, n_classes))
        np.add.at(target, (seeds, y), 1.0)
        f = target.copy()
        for _ in range(SPREAD_ITERATIONS):
            f = SPREAD_ALPHA * (graph @ f) + (1.0 - SPREAD_ALPHA) * target
        total = f.sum(axis=1, keepdims=True)
        return np.where(total > 0, f / np.maximum(total, 1e-300), 0.0)
