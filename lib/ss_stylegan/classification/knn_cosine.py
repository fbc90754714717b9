"""k nearest labelled neighbours by cosine distance, each vote weighted by its similarity."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

K = 5


def knn_cosine_scores(x: np.ndarray, labelled: np.ndarray, y: np.ndarray, n_classes: int, k: int = K) -> np.ndarray:
    """``[N, n_classes]`` similarity-weighted votes of the ``k`` nearest labelled rows, normalised to sum to 1."""
    k = min(k, labelled.size)
    dist, idx = NearestNeighbors(n_neighbors=k, metric="cosine").fit(x[labelled]).kneighbors(x)
    weight = np.clip(1.0 - dist, 1e-6, None)
    scores = np.zeros((x.shape[0], n_classes))
    for c in np.unique(y):
        scores[:, c] = (weight * (y[idx] == c)).sum(axis=1)
    return scores / scores.sum(axis=1, keepdims=True)
