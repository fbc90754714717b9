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
