"""Features for choosing and classifying in the whole embedding (W, or any feature matrix), not in its map.

:func:`prepare_features` standardises the features (or whitens them to their principal components) once per
embedding; the strategies that use them are :mod:`~ss_stylegan.selection.typiclust`,
:mod:`~ss_stylegan.selection.probcover` and :mod:`~ss_stylegan.selection.fps_features`. Every strategy works
cold (nothing chosen) and warm (``chosen``: labelled and reserved points count as picked) and returns
``count`` new indices in pick order, so a server takes the first as one suggestion and the evaluation a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.decomposition import PCA

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
