"""The whole embedding as a server uses it: W standardised and reduced, a bounded set of anchors, and every slice's
nearest anchors, built once per map so that choosing and classifying in W stay instant at a million slices.

The evaluation (:mod:`~ss_stylegan.selection.features`) works on the standardised W of a few thousand slices
directly. A server cannot: k-means, k-NN graphs and δ-balls over every pair of a million slices cost minutes and
gigabytes. :class:`FeatureSpace` bounds that work:

- **features**: W standardised per dimension (as the evaluation's ``standardised``), then projected on its
  leading :data:`MAX_DIMENSIONS` principal components (not whitened, so distances stay those of standardised W
  less the discarded variance; ``kept_variance`` says how much is kept; with at most that many dimensions
  nothing is discarded);
- **anchors**: :data:`MAX_ANCHORS` slices drawn at random (all of them in a smaller map): graph methods
  (ProbCover's balls, label spreading) run on the anchors only, so their memory is bounded whatever the map;
- **the anchors' typicality** (TypiClust's inverse mean distance to the 20 nearest other anchors: exact
  neighbours when every slice is an anchor): the typical slices a strategy picks are anchors;
- **nearest anchors** of any slice (:data:`N_NEAR`, with distances), made when asked: the anchors a slice takes its
  label-spreading scores from, and the δ-ball of a labelled slice that is not an anchor.

Memory beyond W: ``N x MAX_DIMENSIONS`` 4-byte values (a million slices: 128 MB) plus the anchors' (bounded),
and ``N x 2 N_NEAR`` more (80 MB) once every slice's nearest anchors are asked for (the map coloured by label
spreading). Building it is O(N) for the projection and O(anchors^2) for the rest; a server builds it in a
background thread (``benchmarks/bench_server.py`` measures it).
"""

from __future__ import annotations

import threading

import numpy as np

MAX_DIMENSIONS = 32
MAX_ANCHORS = 5_000
N_NEAR = 10
_CHUNK = 4096


def nearest_rows(queries: np.ndarray, refs: np.ndarray, k: int, ref_sq: np.ndarray | None = None,
                 exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``refs`` to each query (Euclidean), by chunked matrix products:
    ``(index int32 [M, k], distance float32 [M, k])``, nearest first. With ``exclude_self`` the queries are the
    refs themselves and each row's own index is skipped."""
    refs = np.asarray(refs, dtype=np.float32)
    ref_sq = (refs * refs).sum(axis=1) if ref_sq is None else ref_sq
    k = min(k, len(refs) - (1 if exclude_self else 0))
    m = len(queries)
    index = np.empty((m, max(k, 0)), dtype=np.int32)
    dist = np.empty((m, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return index, dist
    for start in range(0, m, _CHUNK):
        q = np.asarray(queries[start:start + _CHUNK], dtype=np.float32)
        d2 = (q * q).sum(axis=1)[:, None] - 2.0 * (q @ refs.T) + ref_sq[None, :]
        if exclude_self:
            d2[np.arange(len(q)), np.arange(start, start + len(q))] = np.inf
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < d2.shape[1] else np.tile(np.arange(d2.shape[1]),
                                                                                         (len(q), 1))
        part_d = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(part_d, axis=1, kind="stable")
        index[start:start + len(q)] = np.take_along_axis(part, order, axis=1)
        dist[start:start + len(q)] = np.sqrt(np.maximum(np.take_along_axis(part_d, order, axis=1), 0.0))
    return index, dist


class FeatureSpace:
    """Standardised, reduced W of every slice of one map, its anchors, and the anchors' typicality.

    Args:
        w: ``[N, D]`` the map's W.
        random_state: seed of the anchors and of the projection's sample.
        max_dimensions: components kept.
        max_anchors: anchors drawn (all slices when fewer).
        k_typical: anchors whose mean distance gives an anchor's typicality (TypiClust's 20).
    """

    def __init__(self, w: np.ndarray, random_state: int = 0, max_dimensions: int = MAX_DIMENSIONS,
                 max_anchors: int = MAX_ANCHORS, k_typical: int = 20) -> None:
        w = np.asarray(w, dtype=np.float32)
        n, d = w.shape
        rng = np.random.default_rng(random_state)
        sample = w[rng.choice(n, size=min(n, 50_000), replace=False)] if n > 50_000 else w
        self.mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = sample.std(axis=0, dtype=np.float64).astype(np.float32)
        self.scale = np.where(std > 0, std, 1.0).astype(np.float32)
        z = (sample - self.mean) / self.scale
        if d > max_dimensions and len(z) > 1:
            _, s, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
            self.components: np.ndarray | None = np.ascontiguousarray(vt[:max_dimensions].T, dtype=np.float32)
            self.kept_variance = float((s[:max_dimensions] ** 2).sum() / max((s ** 2).sum(), 1e-12))
        else:
            self.components, self.kept_variance = None, 1.0
        self.x = np.concatenate([self.transform(w[i:i + 65536]) for i in range(0, n, 65536)]) if n else \
            np.zeros((0, min(d, max_dimensions)), np.float32)
        self.anchors = np.sort(rng.choice(n, size=max_anchors, replace=False)) if n > max_anchors else np.arange(n)
        self.anchor_x = np.ascontiguousarray(self.x[self.anchors])
        self.anchor_of = np.full(n, -1, dtype=np.int32)       # row -> its anchor number (-1: not an anchor)
        self.anchor_of[self.anchors] = np.arange(len(self.anchors), dtype=np.int32)
        self._anchor_sq = (self.anchor_x * self.anchor_x).sum(axis=1)
        _, dist = nearest_rows(self.anchor_x, self.anchor_x, k_typical, self._anchor_sq, exclude_self=True)
        mean_dist = dist.mean(axis=1) if dist.shape[1] else np.ones(len(self.anchors), np.float32)
        self.typicality = (1.0 / (mean_dist + 1e-12)).astype(np.float32)   # per anchor
        self._near_all: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.x)

    @property
    def n_anchors(self) -> int:
        return len(self.anchors)

    def transform(self, w: np.ndarray) -> np.ndarray:
        """Features of W vectors (a map's, or an uploaded study's): ``float32 [M, d]``."""
        z = (np.asarray(w, dtype=np.float32) - self.mean) / self.scale
        return np.ascontiguousarray(z @ self.components if self.components is not None else z, dtype=np.float32)

    def nearest_anchors(self, x: np.ndarray, k: int = N_NEAR) -> tuple[np.ndarray, np.ndarray]:
        """Each feature row's ``k`` nearest anchors: ``(anchor numbers int32 [M, k], distances float32 [M, k])``."""
        return nearest_rows(x, self.anchor_x, k, self._anchor_sq)

    def near_of_rows(self, rows: np.ndarray, k: int = N_NEAR) -> tuple[np.ndarray, np.ndarray]:
        """The nearest anchors of map rows (from the whole-map table once it was made)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._near_all is not None:
            return self._near_all[0][rows, :k], self._near_all[1][rows, :k]
        return self.nearest_anchors(self.x[rows], k)

    def near_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every map row's nearest anchors, made on first use (a million slices: tens of seconds) and kept
        (``N x N_NEAR`` indices and distances: 80 MB at a million slices)."""
        with self._lock:
            if self._near_all is None:
                self._near_all = self.nearest_anchors(self.x)
            return self._near_all

    def nbytes(self) -> int:
        arrays = [self.x, self.anchors, self.anchor_x, self.anchor_of, self.typicality]
        arrays += list(self._near_all) if self._near_all is not None else []
        return int(sum(a.nbytes for a in arrays))
