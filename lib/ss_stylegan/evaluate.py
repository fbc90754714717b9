"""The paper's label-efficiency protocol: ``python -m ss_stylegan.evaluate --data ... --out ...``.

1. Embed every slice without labels: SS-StyleGAN W (train, or reuse ``--model-dir`` /
   ``--embeddings``) and, as a baseline, raw-pixel PCA (50 components).
2. Fit a 2-D t-SNE map of each embedding (a new seed per repeat).
3. Select k slices per map with farthest point sampling and with random selection (seeded per repeat).
4. Label them with the true labels, classify every other slice by 1-NN in the map, score.

Two scoring scopes per run: ``all_unlabelled`` (every slice that was not labelled, as in the paper)
and ``unseen_groups`` (only slices whose group — scan — has no labelled slice; neighbouring CT
slices are near-duplicates, so this is the honest number). Results: ``results.json``,
``results.md`` and PNG figures in ``--out``.

Data: an ``.npz`` with ``images`` ``[N, R, R]`` uint8, ``labels`` ``[N]`` and optionally
``classes`` and ``groups``; or a folder of NIfTI volumes with one JSON sidecar each (``slices``:
per-slice ``label``, ``group``), slice ``j`` being ``data[:, :, j]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ss_stylegan.atomic import atomic_write_text
from ss_stylegan.classification import NearestNeighbourClassifier
from ss_stylegan.diagnostics import cross_group_nn_accuracy
from ss_stylegan.evaluation.grid import MAP_SELECTIONS, method_name, predictions, selections
from ss_stylegan.evaluation.studies import score_studies, studies_markdown, summarise_studies
from ss_stylegan.metrics import classification_report
from ss_stylegan.projection import TSNEProjector
from ss_stylegan.recipes import RECIPES, get_recipe
from ss_stylegan.selection import STARTS
from ss_stylegan.strategies import FEATURES, prepare_features

log = logging.getLogger(__name__)

SCOPES = ("unseen_groups", "all_unlabelled")
SUMMARY_METRICS = ("accuracy", "majority_accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity",
                   "macro_auc")
BASELINE_METHOD = "pixel_pca + fps"   # what every method is compared with, repeat by repeat


class EvaluationError(ValueError):
    """The evaluation cannot run on the given data or options; the message says why."""


@dataclasses.dataclass
class Dataset:
    """Slices with labels. ``images`` uint8 ``[N, R, R]``, ``labels`` int ``[N]``, ``groups`` ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    classes: list[str]
    source: str


class Embedder(Protocol):
    """One embedding step: uint8 slices ``[N, R, R]`` -> vectors ``[N, D]``."""

    name: str

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------------------------- data
def load_dataset(path: str | Path, resolution: int | None = None) -> Dataset:
    """Read an npz or a folder of NIfTI volumes + JSON sidecars (see module doc)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in ("images", "labels") if k not in d.files]
            if missing:
                raise EvaluationError(f"{path} lacks {missing}; it has {d.files}")
            images, labels = d["images"], d["labels"].astype(np.int64)
            groups = d["groups"] if "groups" in d.files else np.arange(len(labels)).astype(str)
            classes = [str(c) for c in d["classes"]] if "classes" in d.files else None
    elif path.is_dir():
        images, labels, groups, classes = _read_volumes(path)
    else:
        raise EvaluationError(f"--data must be an .npz file or a folder of NIfTI volumes, got {path}")
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[0] != labels.shape[0]:
        raise EvaluationError(f"images must be [N, R, R] with one label each, got {images.shape}, {labels.shape}")
    if images.dtype != np.uint8:
        raise EvaluationError(f"images must be uint8 (preprocessed slices), got {images.dtype}")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise EvaluationError(f"labels must lie in [0, {len(classes)}), got {labels.min()}..{labels.max()}")
    if resolution is not None and resolution != images.shape[1]:
        images = _resize(images, resolution)
    return Dataset(images, labels, np.asarray(groups).astype(str), classes, str(path))


def _read_volumes(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    import nibabel as nib

    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if not files:
        raise EvaluationError(f"no .nii / .nii.gz volumes in {folder}")
    images, labels, groups, classes = [], [], [], None
    for f in files:
        stem = f.name[: -len(".nii.gz")] if f.name.endswith(".nii.gz") else f.stem
        sidecar = f.with_name(stem + ".json")
        if not sidecar.is_file():
            raise EvaluationError(f"{f.name} has no sidecar {sidecar.name} with per-slice labels")
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        data = np.asarray(nib.load(str(f)).dataobj)
        slices = meta.get("slices", [])
        if len(slices) != data.shape[2]:
            raise EvaluationError(f"{sidecar.name} describes {len(slices)} slices, {f.name} has {data.shape[2]}")
        for s in slices:
            images.append(np.asarray(data[:, :, int(s["slice"])]))
            labels.append(int(s["label"]))
            groups.append(str(s.get("group", f"{stem}:{s['slice']}")))
        classes = classes or meta.get("classes")
    return np.stack(images).astype(np.uint8), np.array(labels), np.array(groups), classes


def _resize(images: np.ndarray, resolution: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.astype(np.float32))[:, None]
    y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return y[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------- embedders
class PixelPCAEmbedder:
    """Raw pixels -> PCA (baseline). Refitted per repeat with that repeat's seed."""

    def __init__(self, n_components: int = 50, seed: int = 0, name: str = "pixel_pca") -> None:
        self.n_components, self.seed, self.name = n_components, seed, name

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        from sklearn.decomposition import PCA

        x = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0
        n = min(self.n_components, x.shape[0] - 1, x.shape[1])
        return PCA(n_components=n, random_state=self.seed + repeat).fit_transform(x).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"kind": "raw-pixel PCA", "n_components": self.n_components}


class PrecomputedEmbedder:
    """W vectors read from an npz (``embeddings`` or ``w`` key) made by an earlier run."""

    def __init__(self, path: str | Path, name: str = "ss_stylegan") -> None:
        self.path, self.name = Path(path), name
        with np.load(self.path, allow_pickle=False) as d:
            key = "embeddings" if "embeddings" in d.files else "w" if "w" in d.files else None
            if key is None:
                raise EvaluationError(f"{self.path} has no 'embeddings' (or 'w') array; it has {d.files}")
            self.W = d[key].astype(np.float32)
            self.info = json.loads(str(d["info"])) if "info" in d.files else {}

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        if self.W.shape[0] != images.shape[0]:
            raise EvaluationError(f"{self.path} holds {self.W.shape[0]} embeddings for {images.shape[0]} slices")
        return self.W

    def describe(self) -> dict[str, Any]:
        return {"kind": "precomputed SS-StyleGAN W", "path": str(self.path), "retrained_per_repeat": False,
                "made_by": self.info}


def model_diagnostics(model: Any) -> dict[str, float]:
    """How well the encoder inverts the generator: ``mu(G(w))`` against ``w`` for the EMA and the raw
    generator (1.0 = no better than the mean w; see :func:`ss_stylegan.embedding.w_recovery_error`)."""
    from ss_stylegan.embedding import w_recovery_error

    device = next(model.parameters()).device   # the live model of a milestone stays where it trains
    return {"w_recovery_ema": round(w_recovery_error(model, 512, device=device, use_ema=True), 4),
            "w_recovery_raw": round(w_recovery_error(model, 512, device=device, use_ema=False), 4)}


class CombinedEmbedder:
    """Two embeddings side by side, each standardised (W next to pixel PCA)."""

    def __init__(self, first: Embedder, second: Embedder, name: str = "combined") -> None:
        self.first, self.second, self.name = first, second, name

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        return np.concatenate([prepare_features(self.first.embed(images, repeat)),
                               prepare_features(self.second.embed(images, repeat))], axis=1)

    def describe(self) -> dict[str, Any]:
        return {"of": [self.first.name, self.second.name], "each": "standardised"}


class FixedEmbedder:
    """Embeddings already in memory (e.g. one training stage's W)."""

    def __init__(self, name: str, W: np.ndarray, info: dict[str, Any] | None = None) -> None:
        self.name, self.W, self.info = name, np.asarray(W, dtype=np.float32), dict(info or {})

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        return self.W

    def describe(self) -> dict[str, Any]:
        return self.info


class GANEmbedder:
    """Train SS-StyleGAN on every slice (no labels), then embed each slice as mu(x) in W.

    Trains once (repeat 0) unless ``retrain_per_repeat``; the trained model and ``embeddings.npz``
    are kept under ``out_dir`` so a later run can reuse them with ``--embeddings``. Slices are resized to
    the model's resolution when the data has another one (the pixel baseline keeps the data's own).

    ``on_stage(W, milestone, model_diagnostics)`` is called at each training milestone
    (``train_cfg.milestone_minutes`` / ``milestone_kimg``) with every slice embedded by the model of that
    moment and :func:`model_diagnostics` of it: the anytime evaluation.
    The final model's W is what :meth:`embed` returns; ``on_stage`` is not called for it.
    """

    def __init__(self, model_cfg: Any, train_cfg: Any, out_dir: Path, device: str = "cpu",
                 retrain_per_repeat: bool = False, model_dir: Path | None = None,
                 max_train_seconds: float | None = None, name: str = "ss_stylegan",
                 on_stage: Callable[[np.ndarray, Any, dict[str, float]], None] | None = None) -> None:
        self.model_cfg, self.out_dir = model_cfg, Path(out_dir)
        if max_train_seconds is not None:
            train_cfg = train_cfg.replace(max_minutes=max_train_seconds / 60.0)
        self.train_cfg = train_cfg
        self.device, self.retrain_per_repeat, self.model_dir, self.name = device, retrain_per_repeat, model_dir, name
        self.on_stage = on_stage
        self.final_diagnostics: dict[str, float] = {}
        self._cache: dict[int, np.ndarray] = {}
        self.train_seconds: list[float] = []
        self.trained: list[dict[str, Any]] = []
        self.model_versions: list[str] = []

    def embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        key = repeat if self.retrain_per_repeat else 0
        if key not in self._cache:
            if images.shape[1] != self.model_cfg.resolution:
                images = _resize(images, self.model_cfg.resolution)
            self._cache[key] = self._train_and_embed(images, key)
        return self._cache[key]

    def _train_and_embed(self, images: np.ndarray, repeat: int) -> np.ndarray:
        from ss_stylegan.checkpoint import load_model
        from ss_stylegan.embedding import embed_images
        from ss_stylegan.training import Milestone, train

        run_dir = self.model_dir or (self.out_dir / (f"gan_repeat{repeat}" if self.retrain_per_repeat else "gan"))
        if self.model_dir is None:
            cfg = self.train_cfg.replace(seed=self.train_cfg.seed + repeat)

            def stage(m: Milestone) -> None:
                if self.on_stage is not None and not m.final:
                    self.on_stage(embed_images(m.model, images, 256, self.device), m, model_diagnostics(m.model))

            result = train(images, self.model_cfg, cfg, run_dir, device=self.device, progress=_log_progress,
                           progress_bar=False, on_milestone=stage if self.on_stage is not None else None)
            self.train_seconds.append(result.elapsed)
            self.trained.append({"steps": result.step, "planned_steps": result.total_steps,
                                 "stopped_by_time_limit": result.out_of_time, "images_seen": result.images_seen,
                                 "train_seconds": round(result.elapsed, 1),
                                 "final_losses": {k: round(float(v), 4) for k, v in result.losses.items()}})
            log.info("SS-StyleGAN trained for %.0f s (repeat %d)", result.elapsed, repeat)
        model = load_model(run_dir, self.device)
        if self.model_dir is not None:   # report how the reused model was trained, not this run's settings
            from ss_stylegan.checkpoint import load_checkpoint, resolve_checkpoint
            from ss_stylegan.config import TrainConfig

            self.train_cfg = TrainConfig.from_dict(load_checkpoint(resolve_checkpoint(run_dir))["train_config"])
        self.model_versions.append(str(model.model_version))
        self.final_diagnostics = model_diagnostics(model)
        W = np.asarray(embed_images(model, images, 256, self.device), dtype=np.float32)
        info = json.dumps(self.describe())
        np.savez(self.out_dir / f"embeddings_repeat{repeat}.npz", embeddings=W, info=np.array(info))
        return W

    def describe(self) -> dict[str, Any]:
        return {"kind": "SS-StyleGAN W (mu of the encoder)", "model": self.model_cfg.to_dict(),
                "train": self.train_cfg.to_dict(), "device": self.device,
                "retrained_per_repeat": self.retrain_per_repeat, "model_dir": str(self.model_dir or ""),
                "train_seconds": [round(s, 1) for s in self.train_seconds], "trained": self.trained,
                "model_versions": self.model_versions}


def _log_progress(p: Any) -> None:
    log.info("GAN step %d/%d, %.0f s, %.1f img/s, losses %s", p.step, p.total_steps, p.elapsed,
             p.images_per_second, {k: round(float(v), 3) for k, v in p.losses.items()})


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

    ``fps_start`` is FPS's first pick (:data:`ss_stylegan.selection.STARTS`): ``random`` (the paper's protocol,
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


def _paired_cell(rows: Sequence[dict[str, Any]], method: str, k: int, scope: str) -> str:
    row = next((r for r in rows if (r["method"], r["k"], r["scope"]) == (method, k, scope)), None)
    if row is None:
        return "n/a"
    se = "" if math.isnan(row["diff_se"]) else f" ± {row['diff_se']:.3f}"
    return f"{row['diff_mean']:+.3f}{se} ({row['wins']}/{row['repeats']})"


def _paired_section(rows: Sequence[dict[str, Any]], ks: Sequence[int], labels: Sequence[tuple[str, str]],
                    scope: str) -> list[str]:
    """Markdown table of paired differences: one row per ``(method, label)``, one column per k."""
    if not rows:
        return []
    what = "unseen scans only" if scope == "unseen_groups" else "all unlabelled slices"
    lines = [f"## Accuracy minus {rows[0]['baseline']}, paired by repeat — {what}", "",
             "Mean ± standard error of the per-repeat difference (same t-SNE and selection seeds), and in how "
             "many repeats the method scored higher. A difference within two standard errors of 0 is one the "
             "repeats cannot tell from noise.", "",
             "| method | " + " | ".join(f"k={k}" for k in ks) + " |", "| --- | " + " | ".join("---" for _ in ks) + " |"]
    for method, label in labels:
        lines.append(f"| {label} | " + " | ".join(_paired_cell(rows, method, k, scope) for k in ks) + " |")
    return lines + [""]


class AnytimeRecorder:
    """The anytime evaluation: scores the map of every training stage with the protocol's seeds.

    Pass it as :class:`GANEmbedder`'s ``on_stage``; each call embeds nothing itself (it gets W), fits the
    maps and scores them like :func:`run_protocol`. :meth:`finish` adds the final stage from the main
    run, whose pixel-PCA rows (same seeds) are the baseline every stage is compared with.
    """

    def __init__(self, data: Dataset, name: str, ks: Sequence[int], repeats: int, seed: int,
                 tsne_params: dict[str, Any] | None, out: Path | None = None, fps_start: str = "random",
                 grid: bool = True, features_kind: str = "standardised") -> None:
        self.data, self.name, self.ks, self.repeats, self.seed = data, name, list(ks), repeats, seed
        self.tsne_params, self.fps_start = dict(tsne_params or {}), fps_start
        self.grid, self.features_kind = grid, features_kind
        self.stages: list[dict[str, Any]] = []
        self._records: list[list[dict[str, Any]]] = []   # per stage, for the paired comparison at the end
        # every stage so far, rewritten (atomically) after each one: a long run cut short keeps its stages
        self.partial_path = out / "anytime_stages.json" if out is not None else None

    def __call__(self, W: np.ndarray, milestone: Any, model_diag: dict[str, float] | None = None) -> None:
        result = run_protocol(self.data, [FixedEmbedder(self.name, W)], self.ks, self.repeats, self.seed,
                              self.tsne_params, self.fps_start, self.grid, self.features_kind)
        diag = {**self._diagnostics(W, model_diag), "map_unseen_reference": result["unseen_reference"][self.name]}
        self._add(milestone.step, milestone.images_seen, milestone.elapsed, milestone.model_version, False,
                  result["summary"], diag)
        self._records.append(result["records"])
        last = self.stages[-1]
        for selector in ("fps", "random"):
            log.info("stage at %.1f min / %.2f kimg: %s + %s accuracy %s", last["minutes"], last["kimg"], self.name,
                     selector, {r["scope"][:6] + f"@{r['k']}": round(r["accuracy_mean"], 3)
                                for r in last["summary"] if r["method"].endswith(selector)})
        log.info("stage diagnostics %s", {k: round(v, 4) for k, v in last["diagnostics"].items()})
        if self.partial_path is not None:
            atomic_write_text(self.partial_path, json.dumps({"embedding": self.name, "stages": self.stages},
                                                            indent=1, default=float))

    def _diagnostics(self, W: np.ndarray, model_diag: dict[str, float] | None) -> dict[str, float]:
        from ss_stylegan.diagnostics import embedding_diagnostics

        return {**embedding_diagnostics(W, self.data.labels, self.data.groups), **(model_diag or {})}

    def _add(self, step: int, images_seen: int, elapsed: float, version: str, final: bool,
             summary: list[dict[str, Any]], diagnostics: dict[str, float]) -> None:
        self.stages.append({"step": int(step), "kimg": images_seen / 1000.0, "minutes": elapsed / 60.0,
                            "model_version": version, "final": final, "diagnostics": diagnostics,
                            "summary": [r for r in summary if r["method"].startswith(self.name + " + ")]})

    def finish(self, gan: GANEmbedder, result: dict[str, Any], baseline: Embedder) -> dict[str, Any]:
        """All stages plus the baseline rows of the main run (``result`` of :func:`run_protocol`) and the
        diagnostics of the ``baseline`` embedding (its repeat-0 vectors)."""
        from ss_stylegan.diagnostics import embedding_diagnostics

        if gan.trained:
            t = gan.trained[-1]
            diag = self._diagnostics(gan.embed(self.data.images, 0), gan.final_diagnostics)
            diag["map_unseen_reference"] = result["unseen_reference"].get(self.name, math.nan)
            self._add(t["steps"], t["images_seen"], t["train_seconds"], gan.model_versions[-1], True,
                      result["summary"], diag)
            self._records.append([r for r in result["records"] if r["embedding"] == self.name])
        baseline_records = [r for r in result["records"] if r["embedding"] == baseline.name]
        for stage, records in zip(self.stages, self._records):
            stage["paired"] = paired_differences(records, baseline_records)
        rows = [r for r in result["summary"] if r["method"].startswith(baseline.name + " + ")]
        diag = embedding_diagnostics(baseline.embed(self.data.images, 0), self.data.labels, self.data.groups)
        diag["map_unseen_reference"] = result["unseen_reference"].get(baseline.name, math.nan)
        return {"embedding": self.name, "stages": self.stages, "baseline": rows,
                "baseline_diagnostics": {baseline.name: diag}}


def anytime_markdown(anytime: dict[str, Any], ks: Sequence[int]) -> str:
    """Accuracy of W at every training stage against the pixel baseline of the same run, per scope."""
    name = anytime["embedding"]
    lines = ["# Anytime evaluation: accuracy of the map at each training stage", ""]
    for scope in ("all_unlabelled", "unseen_groups"):
        what = "all unlabelled slices" if scope == "all_unlabelled" else "unseen scans only"
        head = " | ".join(f"{sel} k={k}" for sel in ("fps", "random") for k in ks)
        lines += [f"## Accuracy on {what} (mean over repeats)", "",
                  f"| map | minutes | kimg | {head} |", "| --- | --- | --- | " + " | ".join(["---"] * 2 * len(ks)) + " |"]
        groups = sorted({r["method"].rsplit(" + ", 1)[0] for r in anytime["baseline"]})
        for emb in groups:
            cells = [_mean_cell(anytime["baseline"], f"{emb} + {sel}", k, scope) for sel in ("fps", "random") for k in ks]
            lines.append(f"| {emb} (baseline) | – | – | " + " | ".join(cells) + " |")
            cells = [_mean_cell(anytime["baseline"], f"{emb} + {sel}", k, scope, "majority_accuracy")
                     for sel in ("fps", "random") for k in ks]
            lines.append(f"| chance: majority class of the {emb} picks' labels | – | – | "
                         + " | ".join(cells) + " |")
        for st in anytime["stages"]:
            cells = [_mean_cell(st["summary"], f"{name} + {sel}", k, scope) for sel in ("fps", "random") for k in ks]
            tag = " (final)" if st["final"] else ""
            lines.append(f"| {name}{tag} | {st['minutes']:.1f} | {st['kimg']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
        paired = [dict(r, method=f"{r['method']}@{i}") for i, st in enumerate(anytime["stages"])
                  for r in st.get("paired", [])]
        labels = [(f"{name} + {sel}@{i}", f"{name} + {sel}, {st['kimg']:.2f} kimg")
                  for i, st in enumerate(anytime["stages"]) if st.get("paired") for sel in ("fps", "random")]
        lines += _paired_section(paired, ks, labels, scope)
    keys = ("same_group_at_10", "cross_group_1nn", "linear_probe", "map_unseen_reference", "w_recovery_ema",
            "w_recovery_raw")
    lines += ["## Diagnostics of the vectors and the map", "",
              "same-group@10: share of a slice's 10 nearest neighbours from its own scan; cross-group 1-NN: class "
              "agreement with the nearest slice of another scan; linear probe: balanced accuracy of a logistic "
              "regression across scans (group 5-fold); map unseen reference: the same cross-scan 1-NN accuracy in the "
              "2-D map (mean over repeats), what the unseen-scan scope gives with every other scan labelled; "
              "w recovery: |mu(G(w)) - w|^2 / var(w) (1 = chance).", "",
              "| embedding | minutes | kimg | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |"]
    for emb, diag in anytime.get("baseline_diagnostics", {}).items():
        lines.append(f"| {emb} (baseline) | – | – | " + " | ".join(_diag_cell(diag, k) for k in keys) + " |")
    for st in anytime["stages"]:
        lines.append(f"| {name} | {st['minutes']:.1f} | {st['kimg']:.2f} | "
                     + " | ".join(_diag_cell(st.get("diagnostics", {}), k) for k in keys) + " |")
    lines.append("")
    return "\n".join(lines)


def _diag_cell(diag: dict[str, float], key: str) -> str:
    return f"{diag[key]:.3f}" if key in diag and diag[key] is not None and not math.isnan(diag[key]) else "–"


def _mean_cell(rows: list[dict[str, Any]], method: str, k: int, scope: str, metric: str = "accuracy") -> str:
    row = next((r for r in rows if (r["method"], r["k"], r["scope"]) == (method, k, scope)), None)
    value = math.nan if row is None else row.get(f"{metric}_mean", math.nan)
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


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


# ---------------------------------------------------------------------------------------- reports
def markdown_report(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """Tables of mean ± std per method (rows) and k (columns), for each metric and scope."""
    summary = result["summary"]
    ks = sorted({r["k"] for r in summary})
    methods = sorted({r["method"] for r in summary})
    lines = [f"# Label-efficiency evaluation: {meta['data']['source']}", "",
             f"{meta['data']['n']} slices, classes {meta['data']['class_counts']}, {meta['data']['n_groups']} groups; "
             f"{meta['repeats']} repeats (t-SNE and selection seeds "
             f"{meta['seed']}..{meta['seed'] + meta['repeats'] - 1}); FPS's first pick: {meta.get('fps_start', 'random')}.",
             ""]
    for name, info in meta["embeddings"].items():
        lines.append(f"- `{name}`: {json.dumps(info, sort_keys=True)}")
    lines.append("")
    metrics = ["accuracy", "majority_accuracy", "balanced_accuracy",
               "auc" if len(meta["data"]["classes"]) == 2 else "macro_auc"]
    for scope in SCOPES:
        what = ("slices of groups (scans) with no labelled slice" if scope == "unseen_groups"
                else "every slice that was not labelled (the paper's protocol)")
        for metric in metrics:
            title = ("majority accuracy (chance: always the most common class of the k labels)"
                     if metric == "majority_accuracy" else metric.replace("_", " "))
            lines += [f"## {title} — scored on {what}", "",
                      "| method | " + " | ".join(f"k={k}" for k in ks) + " |",
                      "| --- | " + " | ".join("---" for _ in ks) + " |"]
            for method in methods:
                cells = []
                for k in ks:
                    row = next(r for r in summary if (r["method"], r["k"], r["scope"]) == (method, k, scope))
                    mean, std = row.get(f"{metric}_mean", math.nan), row.get(f"{metric}_std", math.nan)
                    cells.append("n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}")
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
            lines.append("")
        paired = result.get("paired") or []
        lines += _paired_section(paired, ks, [(m, m) for m in sorted({r["method"] for r in paired})], scope)
    best_rows = result.get("paired_best") or []
    if best_rows:
        lines += ["# Against pixel PCA with its own best pipeline", "",
                  f"Pixel PCA's best pipeline (mean accuracy over every k and both scopes): "
                  f"**{best_rows[0]['baseline']}**; every other method minus it, repeat by repeat.", ""]
        for scope in SCOPES:
            lines += _paired_section(best_rows, ks, [(m, m) for m in sorted({r["method"] for r in best_rows})], scope)
    if result.get("unseen_reference"):
        lines += ["## Reference for the unseen-scan scope", "",
                  "Accuracy of 1-NN in the map when every slice is answered by the nearest slice of *another* scan, "
                  "as if every other scan were labelled (mean over repeats): how far above chance this map puts "
                  "the unseen-scan scope when labels are plentiful. Not a bound: a few labels can land above or "
                  "below it.",
                  "", "| embedding | reference |", "| --- | --- |"]
        lines += [f"| {name} | {value:.3f} |" for name, value in sorted(result["unseen_reference"].items())]
        lines.append("")
    return "\n".join(lines)


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_outputs(result: dict[str, Any], data: Dataset, meta: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``tsne_maps.png`` and ``label_efficiency_*.png``."""
    from ss_stylegan.plots import plot_label_efficiency, plot_maps

    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "summary": result["summary"], "paired": result.get("paired", []),
               "paired_best": result.get("paired_best", []),
               "study_summary": result.get("study_summary", []),
               "unseen_reference": result.get("unseen_reference", {}),
               "timings": result["timings"], "records": result["records"]}
    paths = {"json": atomic_write_text(out / "results.json", json.dumps(_json_safe(payload), indent=1)),
             "md": atomic_write_text(out / "results.md", markdown_report(result, meta))}
    if result.get("study_summary"):
        paths["studies"] = atomic_write_text(out / "studies.md", studies_markdown(result["study_summary"]))
    kmax = max(r["k"] for r in result["summary"])
    paths["maps"] = plot_maps(result["maps"], data.labels, data.classes, result["picks"], out / "tsne_maps.png",
                              title=f"t-SNE maps (repeat 0), coloured by true class; {kmax} picks marked")
    for scope in SCOPES:
        paths[scope] = plot_label_efficiency(result["summary"], out / f"label_efficiency_{scope}.png", scope)
    return paths


def dataset_meta(data: Dataset) -> dict[str, Any]:
    counts = {c: int((data.labels == i).sum()) for i, c in enumerate(data.classes)}
    return {"source": data.source, "n": int(data.labels.size), "resolution": int(data.images.shape[1]),
            "classes": data.classes, "class_counts": counts, "n_groups": int(np.unique(data.groups).size)}


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ss_stylegan.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="npz (images, labels[, classes, groups]) or folder of NIfTI + JSON")
    p.add_argument("--out", required=True, help="output folder for results.md / results.json / PNGs")
    p.add_argument("--resolution", type=int, default=None, help="resize slices to this side (default: as stored)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 50], help="numbers of labelled slices")
    p.add_argument("--repeats", type=int, default=5, help="repetitions with different t-SNE / selection seeds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (GAN training and embedding)")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES),
                   help="train with the app's own recipe for a device (network, training, t-SNE perplexity); "
                        "--model-config / --train-config and the flags below override parts of it")
    p.add_argument("--kimg", type=float, default=None, help="GAN training length in thousands of images")
    p.add_argument("--steps", type=int, default=None, help="GAN training length in steps (overrides --kimg)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--model-config", default=None, help="JSON file or inline JSON of ModelConfig fields")
    p.add_argument("--train-config", default=None, help="JSON file or inline JSON of TrainConfig fields")
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help="training-time budget of each GAN training (the results record the steps done)")
    p.add_argument("--eval-every-minutes", type=float, default=None,
                   help="anytime evaluation: score the map every this many minutes of training time")
    p.add_argument("--eval-every-kimg", type=float, default=None,
                   help="anytime evaluation: score the map every this many thousand training images")
    p.add_argument("--retrain-per-repeat", action="store_true", help="train a new GAN for every repeat")
    p.add_argument("--embeddings", default=None, help="npz with 'embeddings' [N, D]: skip GAN training")
    p.add_argument("--model-dir", default=None, help="reuse a trained SS-StyleGAN folder: embed only")
    p.add_argument("--no-gan", action="store_true", help="only the raw-pixel PCA baseline")
    p.add_argument("--pca-components", type=int, default=50)
    p.add_argument("--perplexity", type=float, default=None, help="t-SNE perplexity (default: the recipe's, or 30)")
    p.add_argument("--tsne-iter", type=int, default=500)
    p.add_argument("--fps-start", default="random", choices=STARTS,
                   help="FPS's first pick: random (the paper's protocol; each repeat's seed), central (the slice "
                        "nearest the map's centre, the server's default) or farthest (the one farthest from it)")
    p.add_argument("--no-grid", action="store_true",
                   help="only the paper's pipeline (FPS / random in the map, 1-NN in the map), not the grid of "
                        "selections and classifiers in the whole embedding")
    p.add_argument("--features", default="standardised", choices=FEATURES,
                   help="how the whole embedding is prepared for the grid's selections and classifiers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def _json_arg(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    text = Path(value).read_text(encoding="utf-8") if Path(value).is_file() else value
    return json.loads(text)


def gan_configs(args: argparse.Namespace, data_resolution: int) -> tuple[Any, Any]:
    """``(ModelConfig, TrainConfig)`` of the GAN: the recipe (if any), then JSON overrides, then flags."""
    from ss_stylegan.config import ModelConfig, TrainConfig

    recipe = get_recipe(args.recipe) if args.recipe else None
    base_model = recipe.model().to_dict() if recipe else {"resolution": data_resolution}
    model_cfg = ModelConfig.from_dict({**base_model, **_json_arg(args.model_config)})
    flags = {"kimg": args.kimg, "steps": args.steps, "batch_size": args.batch_size,
             "max_minutes": args.max_train_minutes, "milestone_minutes": args.eval_every_minutes,
             "milestone_kimg": args.eval_every_kimg}
    base_train = recipe.train.to_dict() if recipe else {}
    base_train.update(milestone_minutes=None, milestone_kimg=None)   # stages only from --eval-every-*
    train_cfg = TrainConfig.from_dict({**base_train, **_json_arg(args.train_config),
                                       **{k: v for k, v in flags.items() if v is not None}})
    if args.kimg is not None and args.steps is None:
        train_cfg = train_cfg.replace(steps=None)
    return model_cfg, train_cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(args.data, args.resolution)
    perplexity = args.perplexity if args.perplexity is not None else (
        get_recipe(args.recipe).perplexity if args.recipe else 30.0)
    tsne = {"perplexity": perplexity, "n_iter": args.tsne_iter}
    embedders: list[Embedder] = []
    anytime: AnytimeRecorder | None = None
    gan: GANEmbedder | None = None
    if args.embeddings:
        embedders.append(PrecomputedEmbedder(args.embeddings))
    elif not args.no_gan:
        model_cfg, train_cfg = gan_configs(args, int(data.images.shape[1]))
        if train_cfg.milestone_minutes or train_cfg.milestone_kimg:
            anytime = AnytimeRecorder(data, "ss_stylegan", args.k, args.repeats, args.seed, tsne, out, args.fps_start,
                                      not args.no_grid, args.features)
        gan = GANEmbedder(model_cfg, train_cfg, out, args.device, args.retrain_per_repeat,
                          Path(args.model_dir) if args.model_dir else None, on_stage=anytime)
        embedders.append(gan)
    pixels = PixelPCAEmbedder(args.pca_components, args.seed)
    embedders.append(pixels)
    if len(embedders) == 2 and not args.no_grid:  # W next to pixel PCA, each standardised
        embedders.append(CombinedEmbedder(embedders[0], embedders[1]))
    start = time.perf_counter()
    result = run_protocol(data, embedders, args.k, args.repeats, args.seed, tsne, args.fps_start,
                          grid=not args.no_grid, features_kind=args.features)
    meta = {"data": dataset_meta(data), "ks": sorted(set(args.k)), "repeats": args.repeats, "seed": args.seed,
            "fps_start": args.fps_start, "grid": not args.no_grid, "features": args.features,
            "recipe": args.recipe, "tsne": tsne, "embeddings": {e.name: e.describe() for e in embedders},
            "wall_seconds": round(time.perf_counter() - start, 1), "argv": list(argv) if argv is not None else sys.argv[1:]}
    paths = write_outputs(result, data, meta, out)
    print(markdown_report(result, meta))
    if anytime is not None and gan is not None:
        paths.update(write_anytime(anytime.finish(gan, result, pixels), meta, out))
        print(Path(paths["anytime_md"]).read_text(encoding="utf-8"))
    print("wrote", ", ".join(str(p) for p in paths.values()))
    return 0


def write_anytime(anytime: dict[str, Any], meta: dict[str, Any], out: Path) -> dict[str, Path]:
    """``anytime.json``, ``anytime.md`` and ``anytime_accuracy.png`` of an anytime evaluation."""
    from ss_stylegan.plots import plot_anytime

    payload = {"meta": meta, **anytime}
    return {"anytime_json": atomic_write_text(out / "anytime.json", json.dumps(_json_safe(payload), indent=1)),
            "anytime_md": atomic_write_text(out / "anytime.md", anytime_markdown(anytime, meta["ks"])),
            "anytime_png": plot_anytime(anytime, out / "anytime_accuracy.png")}


if __name__ == "__main__":
    raise SystemExit(main())
