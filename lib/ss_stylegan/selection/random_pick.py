"""Random selection: the baseline every strategy is measured against.

Same contract as :class:`~ss_stylegan.selection.fps.FarthestPointSelector` (labelled, pending and excluded
points are never picked; a batch equals single calls), with picks drawn uniformly from ``random_state``.
"""

from __future__ import annotations

import numpy as np

from ss_stylegan.selection.fps import FarthestPointState, Pick, Selector


class RandomSelector(Selector):
    """Uniform random picks (baseline), reproducible from ``random_state``.

    The points are visited in one fixed random permutation of ``range(N)``, so a batch equals
    repeated single calls. The reported distance uses the same rule as FPS, for comparison.
    """

    def __init__(self, random_state: int | None = 0) -> None:
        self.random_state = random_state

    def _pick(self, state: FarthestPointState, count: int) -> list[Pick]:
        order = np.random.default_rng(self.random_state).permutation(state.X.shape[0])
        order = order[state.available[order]][:count]
        return [Pick(int(index), state.add(int(index)), "random pick (baseline)") for index in order]


def random_free(points: np.ndarray, taken: np.ndarray, excluded: np.ndarray, count: int, random_state: int,
                max_draws: int = 64) -> list[Pick]:
    """``count`` uniform picks among the rows of ``points`` that are neither ``taken`` (labelled or reserved: the
    centres the distance is measured to) nor ``excluded`` (sorted), for a server at a million slices: rows are
    drawn at random and checked, O(count + taken) per call instead of :class:`RandomSelector`'s O(N x taken). When
    almost every row is taken, the free rows are listed once (O(N))."""
    n = len(points)
    rng = np.random.default_rng(random_state)
    taken_set = set(np.asarray(taken, dtype=np.int64).tolist())
    excluded = np.asarray(excluded, dtype=np.int64)

    def free(row: int) -> bool:
        if row in taken_set:
            return False
        i = int(np.searchsorted(excluded, row))
        return not (i < len(excluded) and int(excluded[i]) == row)

    picks: list[int] = []
    for _ in range(count):
        row = next((r for r in rng.integers(0, n, size=max_draws).tolist() if free(r)), None) if n else None
        if row is None:   # nearly everything taken: draw from the free rows themselves
            mask = np.ones(n, dtype=bool)
            mask[np.fromiter(taken_set, dtype=np.int64, count=len(taken_set))] = False
            mask[excluded] = False
            rest = np.flatnonzero(mask)
            if not len(rest):
                break
            row = int(rng.choice(rest))
        picks.append(row)
        taken_set.add(row)
    centres = np.asarray(taken, dtype=np.int64)
    out = []
    for k, row in enumerate(picks):
        seeds = np.concatenate([centres, np.asarray(picks[:k], dtype=np.int64)])
        distance = float(np.sqrt(((points[seeds] - points[row]) ** 2).sum(axis=1)).min()) if len(seeds) else None
        out.append(Pick(row, distance, "random pick (baseline)"))
    return out
