"""How much an embedding knows, without a map: diagnostics for the label-efficiency study.

The map protocol (t-SNE, FPS, 1-NN) mixes two things: whether an embedding keeps the slices of one scan
together (what 1-NN on the slices of labelled scans rewards) and whether it carries the class across
scans (what unseen scans need). These measure each directly on the vectors ``E [N, D]``:

* :func:`same_group_neighbours`: fraction of each slice's k nearest neighbours from its own scan;
* :func:`cross_group_nn_accuracy`: 1-NN class agreement with the nearest slice of *another* scan;
* :func:`linear_probe`: balanced accuracy of a logistic regression trained on some scans and tested on
  the others (group k-fold), i.e. how linearly decodable the class is across scans.
"""

from __future__ import annotations

import numpy as np

from ss_stylegan.evaluation.metrics import balanced_accuracy


def _neighbours(E: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    k = min(k + 1, E.shape[0])
    return NearestNeighbors(n_neighbors=k).fit(E).kneighbors(E, return_distance=False)[:, 1:]


def same_group_neighbours(E: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the ``k`` nearest neighbours (Euclidean) of each point that share its group."""
    idx = _neighbours(np.asarray(E, dtype=np.float32), k)
    groups = np.asarray(groups)
    return float((groups[idx] == groups[:, None]).mean())


def cross_group_nn_accuracy(E: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Fraction of points whose nearest neighbour from a different group has the same label."""
    from sklearn.neighbors import NearestNeighbors

    E = np.asarray(E, dtype=np.float32)
    labels, groups = np.asarray(labels), np.asarray(groups)
    hits = np.zeros(E.shape[0], dtype=bool)
    index = NearestNeighbors().fit(E)
    k = min(E.shape[0], 64)
    todo = np.arange(E.shape[0])
    while todo.size:   # widen the search for points whose k nearest are all from their own group
        idx = index.kneighbors(E[todo], n_neighbors=k, return_distance=False)
        other = groups[idx] != groups[todo, None]
        found = other.any(axis=1)
        first = idx[np.arange(idx.shape[0]), other.argmax(axis=1)]
        hits[todo[found]] = labels[first[found]] == labels[todo[found]]
        if k >= E.shape[0]:
            break
        todo, k = todo[~found], min(E.shape[0], k * 4)
    return float(hits.mean())


def linear_probe(E: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 5, C: float = 0.1) -> float:
    """Balanced accuracy of a standardised logistic regression, group k-fold (no scan in train and test)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    E, labels = np.asarray(E, dtype=np.float64), np.asarray(labels)
    folds = min(folds, np.unique(groups).size)
    scores = []
    for train, test in GroupKFold(folds).split(E, labels, groups):
        if np.unique(labels[train]).size < 2:
            continue
        scaler = StandardScaler().fit(E[train])
        clf = LogisticRegression(C=C, max_iter=2000).fit(scaler.transform(E[train]), labels[train])
        scores.append(balanced_accuracy(labels[test], clf.predict(scaler.transform(E[test]))))
    return float(np.mean(scores)) if scores else float("nan")


def embedding_diagnostics(E: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """All three diagnostics of one embedding, rounded for reports."""
    return {"same_group_at_10": round(same_group_neighbours(E, groups, 10), 4),
            "cross_group_1nn": round(cross_group_nn_accuracy(E, labels, groups), 4),
            "linear_probe": round(linear_probe(E, labels, groups), 4)}
