"""The JSON shapes of the app's answers, made from the labelling service's typed results.

The REST contract (docs/ARCHITECTURE.md) is written down here and nowhere else: the library answers in
dataclasses (:mod:`ss_stylegan.labelling.results`), these functions name the fields clients read.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ss_stylegan.labelling.findings import Finding
from ss_stylegan.labelling.methods import pipelines_info
from ss_stylegan.labelling.results import MapPoints, ServiceStatus, StudyClassification, Suggestions

from lib.configs.settings import AppSettings, train_config


def suggestions(result: Suggestions) -> dict[str, Any]:
    """``POST /activelearning/{strategy}``: the first pick's fields at the top (MONAI Label's shape) plus
    every pick under ``suggestions``; ``{"done": true, "message": ...}`` when nothing is left now."""
    if not result.picks:
        return {"done": True, "message": result.message, "suggestions": [], "n_labelled": result.n_labelled}
    picks = [{"id": s.image, "slice": s.slice, "position": list(s.position), "world": list(s.world),
              "distance": s.distance, "reason": s.reason, "strategy": s.strategy} for s in result.picks]
    return {**picks[0], "suggestions": picks}


def released(client_id: str, keys: list[tuple[str, int]]) -> dict[str, Any]:
    """``DELETE /activelearning/pending``: the client id and the slices given back."""
    return {"client_id": client_id, "released": [{"image": image, "slice": index} for image, index in keys]}


def classification(result: StudyClassification) -> dict[str, Any]:
    """``POST /infer/classify``: per-slice class, score, scores and labelled neighbour; where each finding is; the
    classifier that answered and the label state (the label store's version) it reflects."""
    answer: dict[str, Any] = {
        "slices": [{
            "slice": s.slice, "class": s.label, "score": s.score, "scores": s.scores,
            "neighbour": {"image": s.neighbour_image, "slice": s.neighbour_slice, "class": s.label,
                          "distance": s.distance},
            "position": list(s.position), "world": list(s.world),
        } for s in result.slices],
        "summary": result.summary,
        "findings": [finding(f) for f in result.findings],
        "positive": result.positive,
        "study_summary": result.study_summary,
        "study_rule": dataclasses.asdict(result.rule) if result.rule is not None else None,
        "volume_class": result.volume_class,
        "n_slices": result.n_slices,
        "labelled_classes": result.labelled_classes,
    }
    if result.warning:
        answer["warning"] = result.warning
    answer["image"] = result.image
    answer["model_version"] = result.model_version
    answer["classifier"] = result.classifier
    answer["label_version"] = result.label_version
    return answer


def finding(f: Finding) -> dict[str, Any]:
    """One class's finding in a study: positive or not, its slices, and its runs of adjacent slices."""
    return {"class": f.class_name, "positive": f.positive, "n_slices": f.n_slices,
            "runs": [{"first_slice": r.first_slice, "last_slice": r.last_slice, "n_slices": r.n_slices,
                      "z_mm": list(r.z_mm) if r.z_mm is not None else None, "peak_score": r.peak_score,
                      "peak_slice": r.peak_slice} for r in f.runs]}


def map_points(points: MapPoints) -> dict[str, Any]:
    """``GET /slicemap/``: every embedded slice, column-wise."""
    return {"model_version": points.model_version, "classifier": points.classifier,
            "label_version": points.label_version,
            "points": {"image": points.image, "slice": points.slice, "x": points.x, "y": points.y,
                       "world": points.world, "label": points.label, "prediction": points.prediction,
                       "score": points.score}}


def info_block(status: ServiceStatus, settings: AppSettings, whole_embedding: dict[str, Any]) -> dict[str, Any]:
    """The ``ss_stylegan`` block of ``GET /info/``; ``whole_embedding``: the state in W of the current map."""
    return {
        "pipelines": {**pipelines_info(settings.strategy, settings.classifier), "whole_embedding": whole_embedding},
        "state": status.state,
        "message": status.message,
        "classes": list(settings.classes),
        "n_slices": status.n_slices,
        "n_embedded": status.n_slices,
        "n_images_embedded": status.n_images_embedded,
        "n_labelled": status.n_labelled,
        "n_flagged": len(status.flagged),
        "flagged_labels": [{k: r[k] for k in ("image", "slice", "class", "flag")} for r in status.flagged[:100]],
        "changed": status.changed,
        "model_version": status.model_version,
        "map": status.map,
        "progress": status.progress,
        "errors": status.errors,
        "embedding": status.embedding,
        "ignored_files": status.ignored_files,
        "problems": status.problems,
        "storage": status.storage,
        "pictures": {"map": "/slicemap/picture.png", "samples": "/slicemap/pictures/samples.png",
                     "reconstructions": "/slicemap/pictures/reconstructions.png"} if status.model_version else {},
        "settings": {
            "resolution": settings.slice_cfg.resolution,
            "window": settings.slice_cfg.window,
            "preset": settings.preset,
            "device": settings.device,
            "gpus": settings.gpus,
            "kimg": settings.train_cfg.kimg,
            "steps": settings.train_cfg.steps,
            "batch_size": settings.train_cfg.batch_size,
            "train_minutes": settings.train_cfg.max_minutes,
            "publish_minutes": settings.train_cfg.milestone_minutes,
            "perplexity": settings.perplexity,
            "random_state": settings.random_state,
        },
    }


def training_started(task: Any, settings: AppSettings, params: dict[str, Any]) -> Any:
    """A started training's task record with its ``request`` saying what is in effect: the training length,
    batch and device this run uses, and the GPUs it trains on (MONAI Label writes ``"gpus": "all"`` into every
    request, whatever the machine has). The task record itself is not changed."""
    if not isinstance(task, dict) or not isinstance(task.get("request"), dict):
        return task
    cfg = train_config(settings.train_cfg, {k: v for k, v in params.items() if k != "device"})
    effective = {"kimg": None if cfg.steps else cfg.kimg, "steps": cfg.steps, "minutes": cfg.max_minutes, "batch_size": cfg.batch_size,
                 "device": params.get("device", settings.device),
                 "gpus": ",".join(str(g) for g in settings.gpus) if settings.gpus else "none (one device)"}
    return {**task, "request": {**task["request"], **effective}}


def learning(progress: dict[str, Any]) -> dict[str, Any]:
    """``GET /train/``'s "is it learning" summary of a training's maps: the reconstruction error and how much of
    each slice's map neighbourhood the map kept since the previous one, per published map, and one sentence."""
    maps = [m for m in progress.get("learning", []) if isinstance(m, dict)]
    if not maps:
        return {"maps": [], "summary": "no map published by this training yet: the first comes at its first "
                                       "milestone (publish_minutes)"}
    first, last = maps[0], maps[-1]
    parts = []
    if len(maps) == 1 and last.get("reconstruction_error") is not None:
        parts.append(f"reconstruction error {last['reconstruction_error']:g} at the first map (step {last['step']}); "
                     "the next map shows whether it falls")
    elif first.get("reconstruction_error") is not None and last.get("reconstruction_error") is not None:
        parts.append(f"reconstruction error {first['reconstruction_error']:g} -> {last['reconstruction_error']:g} "
                     f"over {len(maps)} maps (lower: W holds more of each slice)")
    if last.get("neighbour_stability") is not None:
        parts.append(f"{100 * last['neighbour_stability']:.0f}% of each slice's 10 map neighbours kept since the "
                     "previous map (near 100%: the map has settled)")
    return {"maps": maps, "summary": "; ".join(parts) or "one map so far: nothing to compare yet"}
