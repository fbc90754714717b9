"""2-D t-SNE map of W embeddings (openTSNE) that new slices can be placed into without refitting.

:class:`TSNEProjector` follows scikit-learn conventions: ``__init__`` stores parameters only,
``fit(W)`` returns ``self`` and sets ``embedding_`` ``[N, 2]``; ``transform(W_new)`` places new
points into the existing map with openTSNE's ``TSNEEmbedding.transform`` (each new point is
optimised against the fixed reference map, Poličar et al. 2019), never by refitting.

Large datastores: above ``max_fit_points`` slices, t-SNE is fitted on a random sample of that many
(the *reference*, seeded by ``random_state``) and every other slice is placed into that map with
``transform``, exactly as a slice added later would be. Placement is independent per point, so it runs
in batches (flat memory; ``W`` may be a memory map) with progress, and costs about as much per slice
as one fitted point. The threshold was chosen by measurement (``docs/evaluation/tsne_sampling.md``).

Saving never pickles: ``save(folder)`` writes the reference W, the 2-D map and the parameters to an
``.npz`` (loaded with ``allow_pickle=False``) plus a JSON file, atomically. ``load`` rebuilds the
openTSNE embedding object around an exact nearest-neighbour index over the stored W, so
``transform`` works after a restart and gives the same answer as before the save: the same exact
neighbour search is used for new points whether the projector was just fitted or loaded.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from openTSNE import TSNE, TSNEEmbedding
from openTSNE.affinity import Affinities, joint_probabilities_nn
from sklearn.neighbors import NearestNeighbors

from ss_stylegan.storage.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

ARRAYS_FILE = "tsne_map.npz"
PARAMS_FILE = "tsne_map.json"
FORMAT_VERSION = 1
METRICS = ("euclidean", "cosine")
NEIGHBOR_METHODS = ("auto", "exact", "annoy", "pynndescent")
FFT_MIN_POINTS = 10_000  # reference maps at least this large place new points with FFT gradients
MAX_FIT_POINTS = 10_000  # t-SNE is fitted on a sample of this many above it (docs/evaluation/tsne_sampling.md)
TRANSFORM_BATCH = 10_000  # slices placed per openTSNE call (bounds memory; placement is per point)
CHECK_BATCH = 1 << 16     # rows checked for NaN at a time (a memory-mapped W is never read whole)


class ProjectionError(ValueError):
    """Bad input to the projector (shape, NaN, too few points) or an unusable saved map."""


class ModelVersionMismatch(ProjectionError):
    """The saved map was made from embeddings of another model version than the one asked for."""


class _ReferenceAffinities(Affinities):
    """openTSNE affinities of *new* points to the fixed reference points, by exact k-NN search.

    openTSNE only needs ``to_new`` (and ``P`` of the right shape) to transform new points; the
    joint affinities of the reference points themselves were only needed while fitting.
    """

    def __init__(self, reference: np.ndarray, metric: str, n_jobs: int) -> None:
        super().__init__(verbose=False)
        self.metric = metric
        self.n_jobs = n_jobs
        self._n = reference.shape[0]
        data = _unit_rows(reference) if metric == "cosine" else reference
        self._index = NearestNeighbors(algorithm="brute", metric="euclidean", n_jobs=n_jobs)
        self._index.fit(data)
        self.P = sp.csr_matrix((self._n, self._n), dtype=np.float64)

    @property
    def n_samples(self) -> int:
        return self._n

    def to_new(
        self,
        data: np.ndarray,
        perplexity: float = 5.0,
        return_distances: bool = False,
        k_neighbors: int | str = "auto",
    ) -> Any:
        k = min(self._n, int(3 * perplexity)) if k_neighbors == "auto" else int(k_neighbors)
        k = max(1, min(k, self._n))
        perplexity = min(perplexity, k / 3.0) if k < 3 * perplexity else perplexity
        query = _unit_rows(data) if self.metric == "cosine" else data
        distances, neighbors = self._index.kneighbors(query, n_neighbors=k)
        if self.metric == "cosine":
            distances = distances**2 / 2.0  # cosine distance of unit vectors
        P = joint_probabilities_nn(
            neighbors,
            distances,
            [max(perplexity, 1e-3)],
            symmetrize=False,
            normalization="point-wise",
            n_reference_samples=self._n,
            n_jobs=self.n_jobs,
        )
        if return_distances:
            return P, neighbors, distances
        return P


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class TSNEProjector:
    """Fit a 2-D t-SNE map of W vectors and place new vectors into it.

    Args:
        perplexity: t-SNE perplexity. Clamped (with a log message) to ``(N - 1) / 3`` for tiny N,
            because openTSNE needs ``3 * perplexity`` neighbours per point.
        n_iter: iterations of the normal optimisation phase.
        early_exaggeration_iter: iterations of the early-exaggeration phase.
        early_exaggeration: exaggeration factor of that phase.
        metric: ``"euclidean"`` or ``"cosine"`` distance in W.
        neighbors: openTSNE's k-NN method for the fit (``"auto"``, ``"exact"``, ``"annoy"``,
            ``"pynndescent"``); new points are always placed with an exact search.
        n_jobs: threads for openTSNE and the neighbour search.
        random_state: seed of the PCA initialisation and approximate neighbours.
        transform_perplexity: perplexity used when placing new points (openTSNE default 5).
        transform_n_iter: optimisation iterations when placing new points (openTSNE default 250).
        max_fit_points: fit on a random sample of this many points when there are more (``None``: never
            sample); the others are placed with ``transform`` by :meth:`fit_transform`.

    Attributes (after ``fit`` or ``load``):
        embedding_: float64 ``[S, 2]`` map positions of the reference points, centred at 0.
        reference_: float32 ``[S, D]`` the W vectors the map was fitted on (S = N, or the sample).
        sample_indices_: int64 ``[S]`` rows of the fitted ``W`` that are the reference (after ``fit``).
        perplexity_: the perplexity actually used.
        model_version_: the model version the W vectors came from (``None`` when unknown).
        kl_divergence_: KL divergence of the fitted map.
    """

    def __init__(
        self,
        perplexity: float = 30.0,
        n_iter: int = 500,
        early_exaggeration_iter: int = 250,
        early_exaggeration: float = 12.0,
        metric: str = "euclidean",
        neighbors: str = "auto",
        n_jobs: int = 1,
        random_state: int | None = 0,
        transform_perplexity: float = 5.0,
        transform_n_iter: int = 250,
        max_fit_points: int | None = MAX_FIT_POINTS,
    ) -> None:
        self.perplexity = perplexity
        self.n_iter = n_iter
        self.early_exaggeration_iter = early_exaggeration_iter
        self.early_exaggeration = early_exaggeration
        self.metric = metric
        self.neighbors = neighbors
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.transform_perplexity = transform_perplexity
        self.transform_n_iter = transform_n_iter
        self.max_fit_points = max_fit_points

    # ------------------------------------------------------------------ fit / transform
    def fit(self, W: np.ndarray, model_version: str | None = None) -> TSNEProjector:
        """Fit the map on ``W`` ``[N, D]`` (N >= 4), or on a sample of ``max_fit_points`` rows; returns ``self``."""
        self._check_params()
        W = _check_matrix(W, "W")
        n_all = W.shape[0]
        if self.max_fit_points is not None and n_all > self.max_fit_points:
            sample = np.sort(np.random.default_rng(self.random_state).choice(n_all, self.max_fit_points, replace=False))
            log.info("fitting t-SNE on a sample of %d of %d points; the others are placed into its map",
                     len(sample), n_all)
            W = np.asarray(W[sample])
        else:
            sample = np.arange(n_all)
        n = W.shape[0]
        if n < 4:
            raise ProjectionError(f"t-SNE needs at least 4 points, got {n}; embed more slices first")
        perplexity = float(self.perplexity)
        max_perplexity = (n - 1) / 3.0
        if perplexity > max_perplexity:
            log.info("perplexity %.1f is too large for %d points; using %.2f", perplexity, n, max_perplexity)
            perplexity = max_perplexity
        neighbors = self.neighbors
        if neighbors == "auto":
            neighbors = "exact" if n < 1000 else "annoy"
        start = time.perf_counter()
        tsne = TSNE(
            n_components=2,
            perplexity=perplexity,
            n_iter=int(self.n_iter),
            early_exaggeration_iter=int(self.early_exaggeration_iter),
            early_exaggeration=float(self.early_exaggeration),
            metric=self.metric,
            neighbors=neighbors,
            initialization="pca",
            n_jobs=int(self.n_jobs),
            random_state=self.random_state,
            verbose=False,
        )
        fitted = tsne.fit(W.astype(np.float64, copy=False))
        embedding = np.asarray(fitted, dtype=np.float64)
        # openTSNE's transform centres the reference map in place; centre it now so it never moves.
        embedding = embedding - (embedding.max(axis=0) + embedding.min(axis=0)) / 2.0
        self.reference_ = W.astype(np.float32)
        self.sample_indices_ = sample
        self.perplexity_ = perplexity
        self.model_version_ = model_version
        self.kl_divergence_ = float(getattr(fitted, "kl_divergence", math.nan) or math.nan)
        self._build(embedding)
        log.info("t-SNE map of %d points fitted in %.1f s", n, time.perf_counter() - start)
        return self

    def fit_transform(self, W: np.ndarray, model_version: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``fit(W)`` and the map position of every row of ``W``: float64 ``[N, 2]``.

        Rows outside the fitted sample are placed with :meth:`transform`, batch by batch;
        ``progress(placed, total)`` is called after each batch.
        """
        self.fit(W, model_version=model_version)
        n = W.shape[0]
        out = np.empty((n, 2), dtype=np.float64)
        out[self.sample_indices_] = self.embedding_
        rest = np.setdiff1d(np.arange(n), self.sample_indices_, assume_unique=True)
        if rest.size:
            out[rest] = self.transform(W, rows=rest, progress=progress)
        return out

    def transform(self, W_new: np.ndarray, rows: np.ndarray | None = None,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Place ``W_new`` ``[M, D]`` (or only its ``rows``) into the fitted map; returns float64 ``[M, 2]``.

        Each new point is optimised against the fixed reference map only (new points do not move
        the map or each other), so the answer for a point does not depend on the others. Points are
        placed ``TRANSFORM_BATCH`` at a time (a memory-mapped ``W_new`` is read batch by batch);
        ``progress(placed, total)`` is called after each batch.
        """
        self._check_fitted()
        W_new = _check_matrix(W_new, "W_new")
        if W_new.shape[1] != self.reference_.shape[1]:
            raise ProjectionError(
                f"W_new has {W_new.shape[1]} dimensions but the map was fitted on "
                f"{self.reference_.shape[1]}; embed with the same model"
            )
        rows = np.arange(W_new.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, 2), dtype=np.float64)
        n_ref = self.reference_.shape[0]
        perplexity = min(float(self.transform_perplexity), max(n_ref - 1, 1) / 3.0)
        for start in range(0, rows.size, TRANSFORM_BATCH):
            batch = np.asarray(W_new[rows[start : start + TRANSFORM_BATCH]], dtype=np.float64)
            placed = self._tsne_embedding.transform(batch, perplexity=perplexity, k=min(25, n_ref),
                                                    n_iter=int(self.transform_n_iter))
            out[start : start + len(batch)] = np.asarray(placed, dtype=np.float64)
            if progress is not None:
                progress(start + len(batch), rows.size)
        return out

    @property
    def embedding_(self) -> np.ndarray:
        self._check_fitted()
        return np.asarray(self._tsne_embedding, dtype=np.float64).copy()

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``tsne_map.npz`` (arrays) and ``tsne_map.json`` (parameters) into ``folder``."""
        self._check_fitted()
        folder = Path(folder)
        arrays = {"reference": self.reference_, "embedding": self.embedding_}

        def write(fh: Any) -> None:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            fh.write(buf.getvalue())

        atomic_write(folder / ARRAYS_FILE, write)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.get_params(),
            "perplexity_": self.perplexity_,
            "model_version": self.model_version_,
            "kl_divergence_": None if math.isnan(self.kl_divergence_) else self.kl_divergence_,
            "n_points": int(self.reference_.shape[0]),
            "w_dim": int(self.reference_.shape[1]),
        }
        # The JSON is written last: a folder with a JSON always has the matching arrays.
        atomic_write_text(folder / PARAMS_FILE, json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path, model_version: str | None = None) -> TSNEProjector:
        """Load a map saved by :meth:`save`; no pickled objects are read.

        Args:
            folder: the folder given to :meth:`save`.
            model_version: when given, the saved map must belong to this model version, otherwise
                :class:`ModelVersionMismatch` is raised (the map is stale: refit it).
        """
        folder = Path(folder)
        params_path, arrays_path = folder / PARAMS_FILE, folder / ARRAYS_FILE
        if not params_path.is_file() or not arrays_path.is_file():
            raise ProjectionError(f"no saved t-SNE map in {folder} (expected {PARAMS_FILE} and {ARRAYS_FILE})")
        meta = json.loads(params_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ProjectionError(
                f"{params_path} has format_version {meta.get('format_version')}, this code reads "
                f"{FORMAT_VERSION}; refit the map"
            )
        saved_version = meta.get("model_version")
        if model_version is not None and saved_version != model_version:
            raise ModelVersionMismatch(
                f"the t-SNE map in {folder} belongs to model version {saved_version!r}, not "
                f"{model_version!r}; re-embed and refit the map"
            )
        with np.load(arrays_path, allow_pickle=False) as data:
            reference = np.ascontiguousarray(data["reference"], dtype=np.float32)
            embedding = np.ascontiguousarray(data["embedding"], dtype=np.float64)
        if reference.shape[0] != embedding.shape[0] or embedding.shape[1:] != (2,):
            raise ProjectionError(
                f"{arrays_path} is inconsistent: reference {reference.shape}, embedding {embedding.shape}"
            )
        obj = cls(**meta["params"])
        obj.reference_ = reference
        obj.perplexity_ = float(meta["perplexity_"])
        obj.model_version_ = saved_version
        kl = meta.get("kl_divergence_")
        obj.kl_divergence_ = math.nan if kl is None else float(kl)
        obj._build(embedding)
        return obj

    # ------------------------------------------------------------------ helpers
    def get_params(self) -> dict[str, Any]:
        """The constructor parameters (JSON-serialisable)."""
        return {
            "perplexity": float(self.perplexity),
            "n_iter": int(self.n_iter),
            "early_exaggeration_iter": int(self.early_exaggeration_iter),
            "early_exaggeration": float(self.early_exaggeration),
            "metric": self.metric,
            "neighbors": self.neighbors,
            "n_jobs": int(self.n_jobs),
            "random_state": None if self.random_state is None else int(self.random_state),
            "transform_perplexity": float(self.transform_perplexity),
            "transform_n_iter": int(self.transform_n_iter),
            "max_fit_points": None if self.max_fit_points is None else int(self.max_fit_points),
        }

    def _build(self, embedding: np.ndarray) -> None:
        affinities = _ReferenceAffinities(self.reference_, self.metric, int(self.n_jobs))
        # openTSNE's "auto" would choose by the number of *new* points and pick Barnes-Hut, which
        # rebuilds a quad tree of the whole reference map every iteration; for large maps the FFT
        # method interpolates on a grid that is computed once and reused by every transform.
        method = "bh" if embedding.shape[0] < FFT_MIN_POINTS else "fft"
        self._tsne_embedding = TSNEEmbedding(
            embedding,
            affinities,
            negative_gradient_method=method,
            random_state=self.random_state,
            n_jobs=int(self.n_jobs),
        )

    def _check_params(self) -> None:
        if self.metric not in METRICS:
            raise ProjectionError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.neighbors not in NEIGHBOR_METHODS:
            raise ProjectionError(f"neighbors must be one of {NEIGHBOR_METHODS}, got {self.neighbors!r}")
        if not self.perplexity > 0:
            raise ProjectionError(f"perplexity must be > 0, got {self.perplexity}")
        if self.n_iter < 0 or self.early_exaggeration_iter < 0:
            raise ProjectionError("n_iter and early_exaggeration_iter must be >= 0")
        if self.max_fit_points is not None and int(self.max_fit_points) < 4:
            raise ProjectionError(f"max_fit_points must be >= 4 or None, got {self.max_fit_points}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "_tsne_embedding"):
            raise ProjectionError("this TSNEProjector is not fitted: call fit(W) or TSNEProjector.load(folder)")


def _check_matrix(x: Any, name: str) -> np.ndarray:
    """``x`` as a 2-D numeric array (a memory map stays one: it is checked ``CHECK_BATCH`` rows at a time)."""
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    if x.ndim != 2:
        raise ProjectionError(f"{name} must be a 2-D array [N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ProjectionError(f"{name} must be numeric, got dtype {x.dtype}")
    for start in range(0, x.shape[0], CHECK_BATCH):
        if not np.isfinite(x[start : start + CHECK_BATCH]).all():
            raise ProjectionError(f"{name} contains NaN or infinite values; check the embedding step")
    return x
