"""The paper's label-efficiency protocol, and the paired statistics between pipelines.

Per repeat: fit a 2-D t-SNE map of each embedding (a new seed per repeat), choose k slices with every
pipeline of the grid, label them with the truth, classify every other slice, score. Two scopes:
``all_unlabelled`` (every slice not labelled, as in the paper) and ``unseen_groups`` (only slices whose scan
has no labelled slice; neighbouring CT slices are near-duplicates, so this is the honest number). Every
pipeline is compared repeat by repeat with the baseline and with pixel PCA's own best pipeline.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ss_stylegan.classification.nearest import NearestNeighbourClassifier
from ss_stylegan.evaluation.datasets import Dataset, EvaluationError
from ss_stylegan.evaluation.diagnostics import cross_group_nn_accuracy
from ss_stylegan.evaluation.embedders import Embedder
from ss_stylegan.evaluation.grid import (
    MAP_SELECTIONS,
    method_name,
    predictions,
    selections,
)
from ss_stylegan.evaluation.metrics import classification_report
from ss_stylegan.evaluation.studies import score_studies, summarise_studies
from ss_stylegan.maps.projection import TSNEProjector
from ss_stylegan.selection.features import prepare_features

log = logging.getLogger(__name__)

SCOPES = ("unseen_groups", "all_unlabelled")
BASELINE_METHOD = "pixel_pca + fps"   # what every method is compared with, repeat by repeat


# ---------------------------------------------------------------------------------------- protocol
def map_predictions(points: np.ndarray, labels: np.ndarray, labelled: np.ndarray,
                    n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's classifier: 1-NN in the 2-D map; ``(class index [N], scores [N, C])`` of every point."""
    clf = NearestNeighbourClassifier().fit(points[labelled], labels[labelled])
    pred = clf.predict(points)
    scores = np.zeros((points.shape[0], n_classes))
    scores[:, clf.classes_] = pred.scores  # columns for classes without a label stay 0
    return pred.labels.astype(np.int64), scores


def score_selection(
    points: np.ndarray, labels: np.ndarray, groups: np.ndarray, labelled: np.ndarray, n_classes: int
) -> dict[str, dict[str, Any]]:
    """Label ``labelled`` indices, 1-NN the rest in ``points``, score both scopes."""
    return score_predictions(*map_predictions(points, labels, labelled, n_classes), labels, groups, labelled,
                             n_classes)


def score_predictions(y_all: np.ndarray, scores_all: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                      labelled: np.ndarray, n_classes: int) -> dict[str, dict[str, Any]]:
    """Score predictions of every point on the unlabelled ones, both scopes."""
    unlabelled = np.setdiff1d(np.arange(labels.shape[0]), labelled)
    y_pred, scores = y_all[unlabelled], scores_all[unlabelled]
    unseen = ~np.isin(groups[unlabelled], groups[labelled])
    # chance level of each scope: always answer the class most common among the k labels (ties: lowest index)
    majority = int(np.argmax(np.bincount(labels[labelled], minlength=n_classes)))
    out = {}
    for scope, rows in (("all_unlabelled", slice(None)), ("unseen_groups", unseen)):
        truth = labels[unlabelled][rows]
        out[scope] = classification_report(truth, y_pred[rows], scores[rows], n_classes)
        out[scope]["majority_accuracy"] = float(np.mean(truth == majority)) if truth.size else math.nan
    return out


def run_protocol(
    data: Dataset,
    embedders: Sequence[Embedder],
    ks: Sequence[int] = (10, 20, 50),
    repeats: int = 5,
    seed: int = 0,
    tsne_params: dict[str, Any] | None = None,
    fps_start: str = "random",
    grid: bool = True,
    features_kind: str = "standardised",
) -> dict[str, Any]:
    """Run every (embedding, selection, classifier, k, repeat) combination; returns records, maps and picks.

    With ``grid`` (the default), every selection and classifier of :mod:`ss_stylegan.evaluation.grid` in the
    embedding's features (``features_kind``: standardised or whitened) beside the paper's pipeline; without, the
    paper's pipeline and random selection only.

    ``fps_start`` is FPS's first pick (:data:`ss_stylegan.selection.fps.STARTS`): ``random`` (the paper's protocol,
    drawn from each repeat's seed), ``central`` (the server's default) or ``farthest``."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] >= data.labels.size:
        raise EvaluationError(f"k values must be between 1 and N-1 = {data.labels.size - 1}, got {ks}")
    if repeats < 1:
        raise EvaluationError(f"repeats must be >= 1, got {repeats}")
    n_classes = len(data.classes)
    records: list[dict[str, Any]] = []
    study_records: list[dict[str, Any]] = []
    first_maps: dict[str, np.ndarray] = {}
    first_picks: dict[str, dict[str, np.ndarray]] = {}
    timings: dict[str, list[float]] = {}
    references: dict[str, list[float]] = {}
    for repeat in range(repeats):
        rs = seed + repeat
        for emb in embedders:
            t0 = time.perf_counter()
            W = emb.embed(data.images, repeat)
            t1 = time.perf_counter()
            points = TSNEProjector(random_state=rs, **(tsne_params or {})).fit_transform(W)
            timings.setdefault(f"{emb.name}_tsne_s", []).append(time.perf_counter() - t1)
            timings.setdefault(f"{emb.name}_embed_s", []).append(t1 - t0)
            references.setdefault(emb.name, []).append(cross_group_nn_accuracy(points, data.labels, data.groups))
            features = prepare_features(W, features_kind) if grid else W
            for sel_name, k, labelled in selections(points, features, ks, n_classes, rs, fps_start, grid):
                if repeat == 0 and k == ks[-1]:
                    first_maps[emb.name] = points
                    first_picks.setdefault(emb.name, {})[sel_name] = labelled
                for clf_name, y_all, scores_all in predictions(points, features, data.labels, labelled, n_classes,
                                                               rs, grid, map_predictions):
                    method = method_name(emb.name, sel_name, clf_name)
                    scored = score_predictions(y_all, scores_all, data.labels, data.groups, labelled, n_classes)
                    for scope, report in scored.items():
                        records.append({"repeat": repeat, "embedding": emb.name, "selector": sel_name,
                                        "classifier": clf_name, "method": method, "k": k, "scope": scope, **report})
                    if clf_name == "nn_map" and sel_name in MAP_SELECTIONS:  # the study level: the paper's pipelines
                        study = score_studies(y_all, scores_all, data.labels, data.groups, labelled, data.classes)
                        study_records += [{"repeat": repeat, "method": method, "k": k, "scope": scope, "rule": name,
                                           **rates} for scope, rules in study.items() for name, rates in rules.items()]
            log.info("repeat %d/%d: %s done", repeat + 1, repeats, emb.name)
    # what the unseen-scan scope gives with every other scan labelled: each slice answered by the nearest
    # slice of another scan in the map (a reference for how far above chance that scope can go)
    return {"records": records, "summary": summarise(records), "paired": paired_differences(records),
            "paired_best": paired_vs_best_baseline(records),
            "study_records": study_records, "study_summary": summarise_studies(study_records),
            "unseen_reference": {name: float(np.mean(v)) for name, v in references.items()},
            "maps": first_maps, "picks": first_picks,
            "timings": {k: [round(v, 2) for v in vals] for k, vals in timings.items()}}


def best_pipeline(records: list[dict[str, Any]], embedding: str, metric: str = "accuracy") -> str | None:
    """The method of ``embedding`` with the best mean ``metric`` over every k and both scopes (None: none)."""
    means: dict[str, list[float]] = {}
    for r in records:
        if r.get("embedding") == embedding and not math.isnan(r[metric]):
            means.setdefault(r["method"], []).append(r[metric])
    return max(sorted(means), key=lambda m: float(np.mean(means[m]))) if means else None


def paired_vs_best_baseline(records: list[dict[str, Any]], embedding: str = "pixel_pca") -> list[dict[str, Any]]:
    """Every method minus pixel PCA *with its own best pipeline*, paired by repeat (see :func:`paired_differences`)."""
    best = best_pipeline(records, embedding)
    return paired_differences(records, baseline_method=best) if best is not None else []


def paired_differences(records: list[dict[str, Any]], baseline: Sequence[dict[str, Any]] | None = None,
                       baseline_method: str = BASELINE_METHOD, metric: str = "accuracy") -> list[dict[str, Any]]:
    """Each method's ``metric`` minus the baseline's, repeat by repeat (same seeds), per (k, scope).

    Both are scored with the same t-SNE and selection seeds in a repeat, so the difference is taken repeat by
    repeat; its standard error says whether the repeats can tell the two apart.
    ``baseline`` holds the baseline's records when they come from another call (an anytime stage); by
    default they are looked up in ``records``. Rows: ``method, k, scope, repeats, diff_mean, diff_se, wins``
    (repeats where the method scored higher). Empty when the baseline is not there.
    """
    base = {(r["k"], r["scope"], r["repeat"]): r[metric]
            for r in (records if baseline is None else baseline) if r["method"] == baseline_method}
    diffs: dict[tuple[str, int, str], list[float]] = {}
    for r in records:
        key = (r["k"], r["scope"], r["repeat"])
        if r["method"] == baseline_method or key not in base or math.isnan(r[metric]) or math.isnan(base[key]):
            continue
        diffs.setdefault((r["method"], r["k"], r["scope"]), []).append(r[metric] - base[key])
    rows = []
    for (method, k, scope), d in sorted(diffs.items()):
        v = np.asarray(d, dtype=float)
        rows.append({"method": method, "k": k, "scope": scope, "repeats": int(v.size), "baseline": baseline_method,
                     "diff_mean": float(v.mean()),
                     "diff_se": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan,
                     "wins": int((v > 0).sum())})
    return rows


SUMMARY_METRICS = ("accuracy", "majority_accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity",
                   "macro_auc")


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over repeats per (method, k, scope)."""
    keys = sorted({(r["method"], r["k"], r["scope"]) for r in records})
    rows = []
    for method, k, scope in keys:
        group = [r for r in records if (r["method"], r["k"], r["scope"]) == (method, k, scope)]
        row: dict[str, Any] = {"method": method, "k": k, "scope": scope, "repeats": len(group),
                               "n_scored_mean": float(np.mean([r["n"] for r in group]))}
        for m in SUMMARY_METRICS:
            vals = np.array([r[m] for r in group if m in r], dtype=float)
            vals = vals[~np.isnan(vals)]
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0 if vals.size else math.nan
        rows.append(row)
    return rows
