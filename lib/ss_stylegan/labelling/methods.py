"""The pipelines a server offers: which slices to suggest (strategies) and how to classify (classifiers), in the
2-D map as the paper does, or in the whole of W (issue 19; measured in ``docs/evaluation/whole_embedding.md``).

The strategies and classifiers in W need a per-map :class:`WholeEmbedding` (the feature space, TypiClust's
clusterings, ProbCover's balls, FPS in W). :class:`EmbeddingMethods` builds it in a background thread when a map
appears (:meth:`EmbeddingMethods.prepare`, from the service's ``sync``); a request waits for it at most
:data:`WAIT_S` seconds, and until it is ready a suggestion comes from FPS in the map (its reason says so).
Classifier fits are kept per label state: a label changes the next answer (after one fit, shared by concurrent
requests).
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ss_stylegan.classification.nearest import Prediction
from ss_stylegan.classification.online import (
    FEATURE_CLASSIFIERS,
    FeatureClassifiers,
    FittedClassifier,
)
from ss_stylegan.config import ConfigError
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.selection.feature_space import FeatureSpace
from ss_stylegan.selection.incremental import SuggestionIndex
from ss_stylegan.selection.online import CoverageIndex, OnlinePick, TypiClustIndex

MAP_STRATEGIES = ("fps", "random")
W_STRATEGIES = ("typiclust", "probcover", "fps_w")
STRATEGIES = W_STRATEGIES[:1] + MAP_STRATEGIES + W_STRATEGIES[1:]
CLASSIFIERS = ("nn_map", *FEATURE_CLASSIFIERS)
DEFAULT_STRATEGY, DEFAULT_CLASSIFIER = "typiclust", "nn_map"
PAPER_STRATEGY, PAPER_CLASSIFIER = "fps", "nn_map"
PIPELINES = {"best": (DEFAULT_STRATEGY, DEFAULT_CLASSIFIER), "paper": (PAPER_STRATEGY, PAPER_CLASSIFIER)}
"""``--conf pipeline``: ``best`` is the pipeline that measured best for W on IQ-OTH/NCCD (TypiClust in W, 1-NN in
the map); ``paper`` is SS-StyleGAN's own (FPS in the t-SNE map, 1-NN in the map)."""

DESCRIPTIONS = {
    "typiclust": "TypiClust in W: the most typical slice of the largest cluster without a label",
    "fps": "farthest point sampling in the 2-D t-SNE map (the paper's)",
    "random": "a random unlabelled slice (baseline)",
    "probcover": "ProbCover in W: the slice whose δ-ball covers the most slices not yet covered",
    "fps_w": "farthest point sampling in W itself",
    "nn_map": "1-nearest labelled neighbour in the 2-D t-SNE map (the paper's)",
    "label_spreading": "label spreading on a k-NN graph of W",
    "logistic": "logistic regression on W with balanced classes",
    "knn_cosine": "5 nearest labelled slices in W by cosine distance",
}
WAIT_S = 3.0


class WholeEmbedding:
    """What choosing and classifying in W need for one map, built once (seconds; see ``bench_server.py``)."""

    def __init__(self, slice_map: SliceMap, n_classes: int, random_state: int,
                 busy: Callable[[], bool] | None = None) -> None:
        t0 = time.perf_counter()
        self.space = FeatureSpace(slice_map.w, random_state=random_state)
        self.typiclust = TypiClustIndex(self.space, random_state=random_state)
        self.coverage = CoverageIndex(self.space, n_classes=n_classes, random_state=random_state)
        self.fps_w = SuggestionIndex(self.space.x, start="central", random_state=random_state, busy=busy)
        self.classifiers = FeatureClassifiers(self.space, random_state=random_state)
        self.build_s = time.perf_counter() - t0

    def select(self, strategy: str, labelled: Sequence[int], pending: Sequence[int], count: int,
               excluded: np.ndarray) -> list[OnlinePick]:
        """``count`` picks of ``strategy`` (one of :data:`W_STRATEGIES`); the caller holds the selection lock."""
        if strategy == "fps_w":
            return [OnlinePick(p.index, p.reason.replace("point", "slice in W"), p.distance)
                    for p in self.fps_w.select(labelled=labelled, pending=pending, count=count, exclude=excluded)]
        index = self.typiclust if strategy == "typiclust" else self.coverage
        return index.select([*labelled, *pending], count, np.unique(excluded) if len(excluded) else None)

    def describe(self) -> dict[str, Any]:
        return {"state": "ready", "seconds": round(self.build_s, 2), "slices": len(self.space),
                "dimensions": int(self.space.x.shape[1]), "kept_variance": round(self.space.kept_variance, 3),
                "anchors": self.space.n_anchors, "probcover_radius": round(self.coverage.radius, 4),
                "memory_mb": round(self.space.nbytes() / 1e6, 1)}


@dataclasses.dataclass
class _Kept:
    map_ref: weakref.ref[SliceMap]
    value: WholeEmbedding | None = None
    thread: threading.Thread | None = None
    error: str | None = None
    started: float = 0.0


class EmbeddingMethods:
    """The current map's :class:`WholeEmbedding`, built in the background, and classifier fits per label state.

    Args:
        n_classes: classes (ProbCover's purity rule).
        random_state: seed of the anchors, clusterings and first picks.
    """

    def __init__(self, n_classes: int, random_state: int = 0, busy: Callable[[], bool] | None = None) -> None:
        self.n_classes = n_classes
        self.busy = busy
        self.random_state = random_state
        self._lock = threading.Lock()
        self._kept: _Kept | None = None
        self._fit: tuple[WholeEmbedding, str, dict[int, str], FittedClassifier] | None = None
        self.map_answer: tuple[FittedClassifier, Any, Any] | None = None   # the whole map's last answer, per fit
        self._fit_lock = threading.Lock()
        self.used = False   # whether a strategy or classifier in W was asked for (see get)

    def prepare(self, slice_map: SliceMap) -> bool:
        """Start building ``slice_map``'s whole-embedding state unless it exists or is being built."""
        with self._lock:
            kept = self._kept
            if kept is not None and kept.map_ref() is slice_map:
                return False
            ref = weakref.ref(slice_map)
            thread = threading.Thread(target=self._build, args=(ref,), daemon=True, name="ss_stylegan-whole-w")
            self._kept = _Kept(ref, thread=thread, started=time.monotonic())
            self._fit = self.map_answer = None
            thread.start()
            return True

    def _build(self, ref: weakref.ref[SliceMap]) -> None:
        slice_map = ref()
        if slice_map is None:
            return
        value, error = None, None
        try:
            value = WholeEmbedding(slice_map, self.n_classes, self.random_state, self.busy)
        except (ValueError, MemoryError, np.linalg.LinAlgError) as err:  # a map too small or odd: say so
            error = f"{type(err).__name__}: {err}"
        with self._lock:
            if self._kept is not None and self._kept.map_ref is ref:
                self._kept.value, self._kept.error, self._kept.thread = value, error, None

    def get(self, slice_map: SliceMap, wait_s: float = WAIT_S) -> WholeEmbedding | None:
        """The map's whole-embedding state, waiting for its build at most ``wait_s`` seconds (None if not ready).
        From the first call on, :attr:`used` is true (the server then prepares every new map's state at once)."""
        self.used = True
        self.prepare(slice_map)
        with self._lock:
            kept = self._kept
        if kept is None or kept.map_ref() is not slice_map:
            return None
        if kept.value is None and kept.thread is not None and wait_s > 0:
            kept.thread.join(wait_s)
        return kept.value

    def status(self, slice_map: SliceMap | None) -> dict[str, Any]:
        with self._lock:
            kept = self._kept
        if slice_map is None or kept is None or kept.map_ref() is not slice_map:
            return {"state": "not started", "message": "built in the background when a strategy or classifier in W "
                                                       "is first asked for (or at once when the server's pipeline "
                                                       "uses one)"}
        if kept.value is not None:
            return kept.value.describe()
        if kept.error is not None:
            return {"state": "failed", "error": kept.error}
        return {"state": "building", "seconds": round(time.monotonic() - kept.started, 1)}

    def fitted(self, whole: WholeEmbedding, method: str, labels: dict[int, str], classes: Sequence[str]
               ) -> FittedClassifier:
        """``method`` fitted to ``labels`` (map row -> class; the same object while the labels are the same), kept
        until they change. One fit at a time: concurrent requests after a label wait for that fit and share it."""
        with self._fit_lock:
            kept = self._fit
            if kept is not None and kept[0] is whole and kept[1] == method and kept[2] is labels:
                return kept[3]
            number = {c: i for i, c in enumerate(classes)}
            rows = np.fromiter(labels.keys(), dtype=np.int64, count=len(labels))
            y = np.fromiter((number[c] for c in labels.values()), dtype=np.int64, count=len(labels))
            fit = whole.classifiers.fit(method, rows, y, self.n_classes)
            self._fit = (whole, method, labels, fit)
            return fit


def predict_in_w(methods: EmbeddingMethods, whole: WholeEmbedding, classifier: str, labels: dict[int, str],
                 classes: Sequence[str], rows: np.ndarray | None = None,
                 w: np.ndarray | None = None) -> tuple[Prediction, np.ndarray]:
    """A whole-embedding classifier's answer for map ``rows`` (or W vectors ``w`` of a study not in the map), shaped
    as the 1-NN index answers: the prediction (neighbours are map rows) and the labelled classes (its columns).

    Args:
        labels: map row -> class of every usable label (:meth:`MapIndexes.labelled_rows`).
        classes: the configured classes (their order numbers the classes).
    """
    fit = methods.fitted(whole, classifier, labels, classes)
    whole_map = rows is not None and len(rows) > 50_000
    if whole_map:   # the map's every slice (GET /slicemap/): seconds at a million slices, kept per fit
        key = (len(rows), hash(np.asarray(rows).tobytes()))
        kept = methods.map_answer
        if kept is not None and kept[0] is fit and kept[1] == key:
            return kept[2]
    space = whole.space
    x = space.x[rows] if rows is not None else space.transform(np.asarray(w))
    near = None
    if classifier == "label_spreading" and rows is not None:
        near = space.near_all() if len(rows) > 50_000 else space.near_of_rows(rows)
        near = (near[0][rows], near[1][rows]) if len(rows) > 50_000 else near
    present = np.unique(fit.y)
    scores = whole.classifiers.scores(fit, x, near)[:, present]
    index = np.argmax(scores, axis=1)
    names = np.asarray([classes[i] for i in present], dtype=object)
    neighbour, distance = whole.classifiers.nearest_labelled(fit, x)
    answer = (Prediction(labels=names[index], class_index=index, scores=scores,
                         score=scores[np.arange(len(index)), index], neighbour=neighbour,
                         distance=distance.astype(np.float64)), names)
    if whole_map:
        methods.map_answer = (fit, key, answer)
    return answer


def pipeline_setting(pipeline: str | None, strategy: str | None, classifier: str | None) -> tuple[str, str]:
    """A server's ``(strategy, classifier)`` from its settings: ``pipeline`` (:data:`PIPELINES`, default ``best``)
    then ``strategy`` / ``classifier`` overriding either half.

    Raises:
        ConfigError: an unknown name (the message names the setting and what is allowed).
    """
    name = (pipeline or "best").strip()
    if name not in PIPELINES:
        raise ConfigError(f"--conf pipeline must be one of {list(PIPELINES)}, got {name!r}")
    chosen_strategy, chosen_classifier = PIPELINES[name]
    if strategy:
        if strategy.strip() not in STRATEGIES:
            raise ConfigError(f"--conf strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        chosen_strategy = strategy.strip()
    if classifier:
        if classifier.strip() not in CLASSIFIERS:
            raise ConfigError(f"--conf classifier must be one of {list(CLASSIFIERS)}, got {classifier!r}")
        chosen_classifier = classifier.strip()
    return chosen_strategy, chosen_classifier


def pipelines_info(strategy: str, classifier: str) -> dict[str, Any]:
    """``GET /info/``'s list of every strategy and classifier, and what this server uses."""
    return {"strategy": strategy, "classifier": classifier,
            "strategies": {s: {"description": DESCRIPTIONS[s], "route": f"/activelearning/{s}",
                               "space": "map" if s in MAP_STRATEGIES else "W"} for s in STRATEGIES},
            "classifiers": {c: {"description": DESCRIPTIONS[c], "space": "map" if c == "nn_map" else "W"}
                            for c in CLASSIFIERS},
            "pipelines": {name: {"strategy": s, "classifier": c} for name, (s, c) in PIPELINES.items()}}
