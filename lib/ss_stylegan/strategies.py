"""Choosing which slices to label in the whole embedding (W, or any feature matrix), not in its 2-D map.

At tiny budgets farthest point sampling (the coreset / k-center rule) picks outliers; typicality and coverage
in the full feature space do better (issue 19):

- :class:`TypiClustSelector` -- TypiClust (Hacohen et al., ICML 2022, arXiv 2202.02794): k-means into as many
  clusters as there will be labels, then from the largest cluster holding no label the most *typical* point
  (the inverse of its mean distance to its nearest neighbours).
- :class:`ProbCoverSelector` -- ProbCover (Yehuda et al., NeurIPS 2022, arXiv 2205.11320): greedy coverage of
  the data by balls of radius δ; δ is the largest radius whose balls stay *pure* (their points share a k-means
  cluster) for at least ``purity`` of the points.
- :class:`FarthestInFeatures` -- farthest point sampling in the features themselves.

Every selector works cold (nothing chosen) and warm (``chosen``: labelled and reserved points count as picked)
and returns ``count`` new indices in pick order, so a server takes the first as one suggestion and the
evaluation a batch. Features are prepared once per embedding by :func:`prepare_features` (standardised, or
whitened to their principal components).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

FEATURES = ("standardised", "whitened")


def prepare_features(x: np.ndarray, kind: str = "standardised", max_components: int = 64) -> np.ndarray:
    """``[N, D]`` features ready for distances: each dimension standardised (zero mean, unit variance), or
    whitened (PCA to at most ``max_components`` components, each scaled to unit variance)."""
    x = np.asarray(x, dtype=np.float64)
    if kind == "standardised":
        std = x.std(axis=0)
        return ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)
    if kind == "whitened":
        n = min(max_components, x.shape[1], max(1, x.shape[0] - 1))
        return PCA(n_components=n, whiten=True, random_state=0).fit_transform(x).astype(np.float32)
    raise ValueError(f"features must be one of {FEATURES}, got {kind!r}")


def _chosen(chosen: Sequence[int] | np.ndarray | None) -> np.ndarray:
    return np.unique(np.asarray([] if chosen is None else chosen, dtype=np.int64))


class FarthestInFeatures:
    """Farthest point sampling in the features: each pick is the point farthest from every chosen one.

    Args:
        random_state: seed of the first pick when nothing is chosen (``start="random"``).
        start: ``central`` (the point nearest the mean) or ``random``, for a cold start.
    """

    name = "fps_w"

    def __init__(self, random_state: int = 0, start: str = "central") -> None:
        self.random_state = random_state
        self.start = start

    def select(self, x: np.ndarray, count: int, chosen: Sequence[int] | None = None) -> list[int]:
        chosen_arr = _chosen(chosen)
        dist = np.full(x.shape[0], np.inf)
        for i in chosen_arr:
            dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
        picks: list[int] = []
        for _ in range(min(count, x.shape[0] - chosen_arr.size)):
            if not np.isfinite(dist).any():
                rng = np.random.default_rng(self.random_state)
                i = int(rng.integers(x.shape[0])) if self.start == "random" else \
                    int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))
            else:
                i = int(np.argmax(np.where(np.isfinite(dist), dist, -1.0)))
            picks.append(i)
            dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
            dist[i] = -1.0  # never again
        return picks


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


def purity_radius(x: np.ndarray, n_classes: int, purity: float = 0.95, random_state: int = 0,
                  candidates: int = 20) -> float:
    """ProbCover's δ: the largest radius at which at least ``purity`` of the points have a ball holding only
    points of their own k-means cluster (``n_classes`` clusters, the number of classes)."""
    cluster = KMeans(max(2, n_classes), n_init=3, random_state=random_state).fit_predict(x)
    # a ball is pure up to the distance of the nearest point of another cluster
    impure_at = np.full(x.shape[0], np.inf)
    for c in np.unique(cluster):
        others = np.flatnonzero(cluster != c)
        if others.size == 0:
            continue
        dist, _ = NearestNeighbors(n_neighbors=1).fit(x[others]).kneighbors(x[cluster == c])
        impure_at[cluster == c] = dist[:, 0]
    # largest δ with share(impure_at > δ) >= purity: the (1 - purity) quantile of the impurity distances
    radius = float(np.quantile(impure_at[np.isfinite(impure_at)], 1.0 - purity)) if np.isfinite(impure_at).any() \
        else float(np.linalg.norm(x.max(axis=0) - x.min(axis=0)))
    return max(radius, 1e-6)


class ProbCoverSelector:
    """ProbCover: greedily the point whose δ-ball covers the most points not yet covered.

    Args:
        n_classes: classes expected (k-means clusters of the purity rule).
        purity: share of pure balls the radius keeps (the paper's 0.95).
        radius: δ itself (None: from the purity rule).
        max_neighbours: most neighbours kept per point (bounds the graph's memory at scale).
    """

    name = "probcover"

    def __init__(self, n_classes: int = 2, purity: float = 0.95, radius: float | None = None,
                 random_state: int = 0, max_neighbours: int = 200) -> None:
        self.n_classes = n_classes
        self.purity = purity
        self.radius = radius
        self.random_state = random_state
        self.max_neighbours = max_neighbours
        self.radius_: float | None = None

    def select(self, x: np.ndarray, count: int, chosen: Sequence[int] | None = None) -> list[int]:
        chosen_arr = _chosen(chosen)
        count = min(count, x.shape[0] - chosen_arr.size)
        if count <= 0:
            return []
        delta = self.radius if self.radius is not None else purity_radius(
            x, self.n_classes, self.purity, self.random_state)
        self.radius_ = delta
        k = min(self.max_neighbours, x.shape[0])
        dist, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
        balls = [row[d < delta] for row, d in zip(idx, dist)]  # each point's ball (itself included)
        covered = np.zeros(x.shape[0], dtype=bool)
        for i in chosen_arr:
            covered[balls[i]] = True
        taken = np.zeros(x.shape[0], dtype=bool)
        taken[chosen_arr] = True
        gain = np.array([np.count_nonzero(~covered[b]) for b in balls])
        picks: list[int] = []
        rng = np.random.default_rng(self.random_state)
        while len(picks) < count:
            gain[taken] = -1
            best = int(np.argmax(gain))
            if gain[best] <= 0:  # everything covered: the rest at random, as the paper does
                best = int(rng.choice(np.flatnonzero(~taken)))
            picks.append(best)
            taken[best] = True
            newly = balls[best][~covered[balls[best]]]
            covered[newly] = True
            if newly.size:  # every ball holding a newly covered point gains less
                for j in np.flatnonzero(~taken):
                    if gain[j] > 0:
                        gain[j] = np.count_nonzero(~covered[balls[j]])
        return picks
