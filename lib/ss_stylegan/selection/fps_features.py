"""Farthest point sampling in the features themselves (the coreset / k-center rule in W, not in the map)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ss_stylegan.selection.features import _chosen
from ss_stylegan.selection.fps import DEFAULT_START


class FarthestInFeatures:
    """Farthest point sampling in the features: each pick is the point farthest from every chosen one.

    Args:
        random_state: seed of the first pick when nothing is chosen (``start="random"``).
        start: ``central`` (the point nearest the mean) or ``random``, for a cold start.
    """

    name = "fps_w"

    def __init__(self, random_state: int = 0, start: str = DEFAULT_START) -> None:
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
