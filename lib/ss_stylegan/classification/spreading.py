"""Label spreading on a k-NN graph of every slice: the transductive classifier for very few labels.

Every slice, labelled or not, shapes the answer: labels flow along the graph of nearest neighbours in the
features, so a class reaches the slices that are connected to its labelled examples by dense regions.
"""

from __future__ import annotations

import numpy as np
from sklearn.semi_supervised import LabelSpreading


def label_spreading_scores(x: np.ndarray, labelled: np.ndarray, y: np.ndarray, n_classes: int,
                           n_neighbours: int = 10) -> np.ndarray:
    """``[N, n_classes]`` scores (rows sum to 1; a class without a label scores 0) of every row of ``x``."""
    target = np.full(x.shape[0], -1, dtype=np.int64)
    target[labelled] = y
    model = LabelSpreading(kernel="knn", n_neighbors=min(n_neighbours, x.shape[0] - 1), alpha=0.2,
                           max_iter=100).fit(x, target)
    dist = np.nan_to_num(model.label_distributions_, nan=0.0)
    scores = np.zeros((x.shape[0], n_classes))
    scores[:, model.classes_] = dist / np.maximum(dist.sum(axis=1, keepdims=True), 1e-12)
    return scores
