"""Random selection: the baseline every strategy is measured against.

Same contract as :class:`~ss_stylegan.selection.fps.FarthestPointSelector` (labelled, pending and excluded
points are never picked; a batch equals single calls), with picks drawn uniformly from ``random_state``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from ss_stylegan.selection.fps import Pick, Selector, _prepare

log = logging.getLogger(__name__)

class RandomSelector(Selector):
    """Uniform random picks (baseline), reproducible from ``random_state``.

    The points are visited in one fixed random permutation of ``range(N)``, so a batch equals
    repeated single calls. The reported distance uses the same rule as FPS, for comparison.
    """

    def __init__(self, random_state: int | None = 0) -> None:
        self.random_state = random_state

    def select(
        self,
        X: np.ndarray,
        labelled: Iterable[int] = (),
        pending: Iterable[int] = (),
        count: int = 1,
        exclude: Iterable[int] = (),
    ) -> list[Pick]:
        state, count = _prepare(X, labelled, pending, count, exclude)
        order = np.random.default_rng(self.random_state).permutation(state.X.shape[0])
        order = order[state.available[order]][:count]
        picks = []
        for index in order:
            distance = state.add(int(index))
            picks.append(Pick(int(index), distance, "random pick (baseline)"))
        return picks
