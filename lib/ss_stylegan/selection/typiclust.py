"""TypiClust (Hacohen et al., ICML 2022, arXiv 2202.02794): typical points of uncovered clusters.

k-means into as many clusters as there will be labels; then, from the largest cluster holding no chosen
point, its most *typical* point (the inverse of its mean distance to its nearest neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.neighbors import NearestNeighbors

from ss_stylegan.selection.features import _chosen


def typicality(x: np.ndarray, k: int = 20) -> np.ndarray:
    """``[N]`` inverse mean distance of each point to its ``k`` nearest neighbours (itself excluded)."""
    k = min(k, x.shape[0] - 1)
    if k < 1:
        return np.ones(x.shape[0])
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return 1.0 / (dist[:, 1:].mean(axis=1) + 1e-12)


class TypiClustSelector:
    """TypiClust: one pick from each of the largest clusters that hold no chosen point, the most typical one.

    Args:
        random_state: k-means seed.
        k_typical: neighbours for typicality (the paper's 20).
        max_clusters: cap on clusters (the paper caps at 500 for large budgets).
    """

    name = "typiclust"

    def __init__(self, random_state: int = 0, k_typical: int = 20, max_clusters: int = 500) -> None:
        self.random_state = random_state
        self.k_typical = k_typical
        self.max_clusters = max_clusters

    def select(self, x: np.ndarray, count: int, chosen: Sequence[int] | None = None) -> list[int]:
        chosen_arr = _chosen(chosen)
        count = min(count, x.shape[0] - chosen_arr.size)
        if count <= 0:
            return []
        n_clusters = int(min(chosen_arr.size + count, self.max_clusters, x.shape[0]))
        kmeans = (KMeans(n_clusters, n_init=3, random_state=self.random_state) if x.shape[0] <= 20000 else
                  MiniBatchKMeans(n_clusters, n_init=3, random_state=self.random_state, batch_size=4096))
        cluster = kmeans.fit_predict(x)
        sizes = np.bincount(cluster, minlength=n_clusters)
        covered = np.bincount(cluster[chosen_arr], minlength=n_clusters) if chosen_arr.size else \
            np.zeros(n_clusters, dtype=np.int64)
        taken = np.zeros(x.shape[0], dtype=bool)
        taken[chosen_arr] = True
        picks: list[int] = []
        while len(picks) < count:
            # the clusters holding fewest chosen points, largest first (ties: lowest id)
            free = np.array([sizes[c] > np.count_nonzero(taken[cluster == c]) for c in range(n_clusters)])
            order = np.lexsort((np.arange(n_clusters), -sizes, covered))
            c = int(next(c for c in order if free[c]))
            members = np.flatnonzero((cluster == c) & ~taken)
            typical = typicality(x[cluster == c], self.k_typical)[np.searchsorted(np.flatnonzero(cluster == c),
                                                                                   members)]
            i = int(members[np.argmax(typical)])
            picks.append(i)
            taken[i] = True
            covered[c] += 1
        return picks
