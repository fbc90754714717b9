"""Which slices to label next: farthest point sampling (k-center greedy) and a random baseline.

Both selectors work on points ``X`` ``[N, D]`` of any dimension (the 2-D t-SNE map, or W itself)
and are seeded by the indices already labelled and those already suggested / pending, so two
annotators asking in turn never get the same slice. A batch of ``count`` picks equals ``count``
single calls where each pick is added to ``pending`` before the next.

``exclude`` lists points that are unavailable but are *not* centres (e.g. slices of a study that
was deleted from the datastore): they are never picked and never push picks away from themselves.
A point that is both labelled/pending and excluded counts as excluded.

Farthest point sampling keeps, for every point, its distance to the nearest seed (labelled,
pending or picked). Each pick is the unpicked point with the largest such distance; the array is
then updated with the distance to the new pick only, so each pick costs O(N·D) vectorised work.
Ties go to the lowest index. Exact duplicates of a seed have distance 0 and therefore come last,
but are still offered once everything else is picked: no index is ever returned twice and a
labelled or pending index is never returned. When nothing is left, fewer picks (or none) are
returned; this is not an error.

The first pick when nothing is labelled or pending (``start``):
    ``"central"`` (:data:`DEFAULT_START`, the server's): the point nearest the centroid (a typical slice);
    ``"random"``: a uniformly random point drawn from ``random_state`` (reproducible; the evaluation's);
    ``"farthest"``: the point farthest from the centroid (the most atypical slice).
Its :attr:`Pick.distance` is ``None`` because there is nothing to be far from yet.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Iterable

import numpy as np
from scipy.spatial import cKDTree

from ss_stylegan.labelling.validation import finite_points

log = logging.getLogger(__name__)

STARTS = ("random", "central", "farthest")
DEFAULT_START = "central"   # every FPS of the project starts here unless told otherwise
_SEED_CHUNK = 512


class SelectionError(ValueError):
    """Bad input to a selector: wrong shape, NaN, an index out of range or a negative count."""


@dataclasses.dataclass(frozen=True)
class Pick:
    """One suggested point.

    Attributes:
        index: row of ``X``.
        distance: distance to the nearest labelled / pending / earlier-picked point when it was
            picked (``None`` for a first pick with nothing to compare against).
        reason: one sentence a person can read.
    """

    index: int
    distance: float | None
    reason: str


class FarthestPointState:
    """Incremental k-center greedy state over ``X`` ``[N, D]``.

    Args:
        X: points ``[N, D]``.
        seeds: indices that are already labelled or pending: centres, never picked.
        exclude: indices that are unavailable but are not centres: never picked, never a centre.
    """

    def __init__(self, X: np.ndarray, seeds: Iterable[int] = (), exclude: Iterable[int] = ()) -> None:
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        n = self.X.shape[0]
        seed_idx = _as_indices(seeds, n, "seeds")
        excluded = np.zeros(n, dtype=bool)
        excluded[_as_indices(exclude, n, "exclude")] = True
        seed_idx = seed_idx[~excluded[seed_idx]]
        self.available = ~excluded
        self.available[seed_idx] = False
        self.n_seeds = int(np.unique(seed_idx).size)
        self.min_dist = _min_distance_to(self.X, self.X[np.unique(seed_idx)]) if seed_idx.size else None

    @property
    def n_available(self) -> int:
        return int(self.available.sum())

    def farthest(self) -> int | None:
        """Index of the available point farthest from every seed (lowest index on ties)."""
        if self.min_dist is None or not self.available.any():
            return None
        masked = np.where(self.available, self.min_dist, -np.inf)
        return int(np.argmax(masked))

    def add(self, index: int) -> float | None:
        """Mark ``index`` as a seed; returns its distance to the nearest earlier seed. O(N·D)."""
        distance = None if self.min_dist is None else float(self.min_dist[index])
        self.available[index] = False
        self.n_seeds += 1
        diff = self.X - self.X[index]
        d = np.sqrt(np.einsum("nd,nd->n", diff, diff))
        self.min_dist = d if self.min_dist is None else np.minimum(self.min_dist, d)
        return distance


class Selector(abc.ABC):
    """Interface of every selection strategy: :meth:`select` checks the request and seeds the state with the
    labelled and pending points; a strategy says how it picks from that state (:meth:`_pick`)."""

    def select(
        self,
        X: np.ndarray,
        labelled: Iterable[int] = (),
        pending: Iterable[int] = (),
        count: int = 1,
        exclude: Iterable[int] = (),
    ) -> list[Pick]:
        """Pick up to ``count`` indices of ``X`` ``[N, D]`` that are neither labelled, pending nor excluded.

        ``labelled`` and ``pending`` points are centres that picks keep away from; ``exclude``
        points are merely unavailable (they neither get picked nor repel picks).
        """
        self._check()
        X = _check_points(X)
        n = X.shape[0]
        seeds = np.concatenate([_as_indices(labelled, n, "labelled"), _as_indices(pending, n, "pending")])
        return self._pick(FarthestPointState(X, seeds, exclude), _check_count(count))

    def _check(self) -> None:
        """Refuse settings that cannot select (before any work)."""

    @abc.abstractmethod
    def _pick(self, state: FarthestPointState, count: int) -> list[Pick]:
        """Up to ``count`` picks among ``state``'s available points, each added to ``state`` as it is made."""


class FarthestPointSelector(Selector):
    """Farthest point sampling (k-center greedy), the paper's selection rule.

    Args:
        start: how the first point is chosen when nothing is labelled or pending (see module doc).
        random_state: seed of the ``"random"`` start.
    """

    def __init__(self, start: str = DEFAULT_START, random_state: int | None = 0) -> None:
        self.start = start
        self.random_state = random_state

    def _check(self) -> None:
        if self.start not in STARTS:
            raise SelectionError(f"start must be one of {STARTS}, got {self.start!r}")

    def _pick(self, state: FarthestPointState, count: int) -> list[Pick]:
        picks: list[Pick] = []
        while len(picks) < count and state.n_available:
            index = state.farthest()
            if index is None:
                index = _first_pick(state.X, state.available, self.start, self.random_state)
                state.add(index)
                picks.append(_first_fps_pick(index, self.start))
                continue
            picks.append(_fps_pick(index, state.add(index)))
        return picks


def _first_pick(X: np.ndarray, available: np.ndarray, start: str, random_state: int | None) -> int:
    """The first FPS pick among ``available`` rows of ``X`` (``bool [N]``, at least one True) by the ``start`` rule."""
    if start == "random":
        order = np.random.default_rng(random_state).permutation(X.shape[0])
        return int(order[available[order]][0])
    candidates = np.flatnonzero(available)
    centre = X[candidates].mean(axis=0)
    d = np.linalg.norm(X[candidates] - centre, axis=1)
    return int(candidates[np.argmin(d) if start == "central" else np.argmax(d)])


def _first_fps_pick(index: int, start: str) -> Pick:
    return Pick(index, None, f"first pick ({start} start): nothing labelled yet")


def _fps_pick(index: int, distance: float) -> Pick:
    return Pick(index, distance, f"farthest from every labelled or suggested point (distance {distance:.3g})")


def _min_distance_to(X: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``X`` ``[N, D]`` to its nearest row of ``centres``."""
    if X.shape[1] <= 8:
        d, _ = cKDTree(centres).query(X, k=1)
        return np.asarray(d, dtype=np.float64)
    x2 = np.einsum("nd,nd->n", X, X)
    best = np.full(X.shape[0], np.inf)
    for start in range(0, centres.shape[0], _SEED_CHUNK):
        c = centres[start : start + _SEED_CHUNK]
        d2 = x2[:, None] + np.einsum("kd,kd->k", c, c)[None, :] - 2.0 * X @ c.T
        best = np.minimum(best, d2.min(axis=1))
    return np.sqrt(np.maximum(best, 0.0))


def _check_points(X: np.ndarray) -> np.ndarray:
    return finite_points(X, "points", SelectionError)


def _check_count(count: int) -> int:
    if int(count) != count or count < 0:
        raise SelectionError(f"count must be a non-negative integer, got {count!r}")
    return int(count)


def _as_indices(values: Iterable[int], n: int, name: str) -> np.ndarray:
    idx = np.asarray(list(values) if not isinstance(values, np.ndarray) else values).reshape(-1)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise SelectionError(f"{name} must be integer indices, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= n:
        raise SelectionError(f"{name} has indices outside [0, {n}): min {idx.min()}, max {idx.max()}")
    return idx.astype(np.int64)
