"""Train, then publish a map at each milestone: what a training run does from the studies to the served map.

1. build (or update) the slice cache of every study in the folder;
2. train SS-StyleGAN on one device, or on one process per GPU (:func:`ss_stylegan.training.launcher.launch`;
   this process is rank 0), resuming from the last checkpoint of the same model configuration; stoppable by
   the workspace's ``STOP`` file;
3. at every milestone (every ``publish_minutes`` of training, and at the end) training pauses while every
   slice is embedded into W with the encoder of that checkpoint and the t-SNE map is fitted
   (:func:`ss_stylegan.maps.build.map_from_checkpoint`); checkpoint, projector and slice map are published as
   one new version made current by a single atomic pointer switch (:meth:`Workspace.publish`). Suggestions
   start with the first map and improve with each; a run killed mid-publish leaves the previous version in use.

Every step is reported in the workspace's status file (``status.json``), which the server shows.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.neighbors import NearestNeighbors

from ss_stylegan.config import ModelConfig, SliceConfig, TrainConfig
from ss_stylegan.maps.build import StudiesRead, map_from_checkpoint, read_studies
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.model.checkpoint import latest_checkpoint, read_record
from ss_stylegan.training.launcher import launch
from ss_stylegan.training.progress import Milestone, TrainProgress
from ss_stylegan.workspace import TrainingStatus, Workspace

log = logging.getLogger(__name__)

PICTURE_NAMES = ("samples.png", "reconstructions.png")   # published with each map version
NEIGHBOURS = 10            # map neighbours compared between consecutive versions
STABILITY_SAMPLE = 2000    # slices whose neighbours are compared (a random sample of the map)
MIN_SLICES = 4             # fewer usable slices cannot make a batch worth training
STATUS_EVERY_S = 0.5       # the status file is rewritten at most this often while training


@dataclasses.dataclass(frozen=True)
class MapRecipe:
    """What a run needs besides the training settings: how slices are read, the model, the map, the devices."""

    slice_cfg: SliceConfig
    model_cfg: ModelConfig
    perplexity: float = 30.0
    random_state: int = 0
    gpus: list[int] | None = None


def train_and_publish(workspace: Workspace, studies: str | Path, recipe: MapRecipe, train_cfg: TrainConfig,
                      device: str) -> dict[str, Any]:
    """Cache -> train -> (embed -> map -> publish) at each milestone, with the status written all along.

    Returns the run's summary (also its final status's ``progress``); ``{"stopped": True, ...}`` when a stop
    was requested. Any error is written as the ``failed`` status and raised.
    """
    return _Run(workspace, Path(studies), recipe, train_cfg, device).run()


class _Run:
    def __init__(self, workspace: Workspace, studies: Path, recipe: MapRecipe, train_cfg: TrainConfig,
                 device: str) -> None:
        self.workspace, self.studies, self.recipe, self.train_cfg, self.device = (
            workspace, studies, recipe, train_cfg, device)
        self.progress: dict[str, Any] = {"phase": "cache"}
        self.published: list[str] = []
        self.last_write = 0.0
        self.read: StudiesRead | None = None
        self.previous: SliceMap | None = None   # the map this run published last (neighbour stability)

    def status(self, state: str, message: str) -> None:
        self.workspace.write_status(TrainingStatus(state=state, message=message, progress=dict(self.progress),
                                                   pid=os.getpid()))

    def run(self) -> dict[str, Any]:
        t_start = time.monotonic()
        self.workspace.clear_stop()
        try:
            read = self._read_studies()
            out_dir = self.workspace.checkpoint_dir_for(self.recipe.model_cfg.to_dict())
            previous = latest_checkpoint(out_dir) if self.train_cfg.resume else None
            self.progress["resumed_from_step"] = int(read_record(previous)["step"]) if previous is not None else 0
            # one process on `device`, or one per GPU (rank 0 is this process: callbacks as usual)
            result = launch(read.cache.images, self.recipe.model_cfg, self.train_cfg, out_dir, gpus=self.recipe.gpus,
                            progress=self.on_progress, should_stop=self.workspace.stop_requested, device=self.device,
                            progress_bar=False, on_milestone=self.on_milestone)
            if result.stopped:
                self.workspace.clear_stop()
                self.progress["phase"] = "stopped"
                self.status("ready" if self.workspace.has_map() else "untrained",
                            "training stopped on request; POST /train/ss_stylegan resumes from the last checkpoint")
                return {"stopped": True, **self.progress}
            self.progress.update({"phase": "done", "elapsed_s": round(time.monotonic() - t_start, 1),
                                  "out_of_time": result.out_of_time})
            why = " (its time budget ran out)" if result.out_of_time else ""
            self.status("ready", f"model {self.progress.get('model_version')}: {len(read.cache)} slices embedded "
                                 f"and mapped{why}")
            return dict(self.progress)
        except BaseException as err:
            self.progress["phase"] = "failed"
            self.status("failed", f"{type(err).__name__}: {err}")
            raise

    def _read_studies(self) -> StudiesRead:
        self.status("training", "reading and caching every slice of the datastore")
        read = self.read = read_studies(self.studies, self.recipe.slice_cfg, self.workspace.cache_dir)
        if len(read.cache) < MIN_SLICES:
            raise ValueError(
                f"only {len(read.cache)} usable slice(s) in {self.studies} (at least {MIN_SLICES} are needed); "
                "add studies" + (f"; unreadable: {read.errors}" if read.errors else ""))
        self.progress.update({"phase": "train", "n_slices": len(read.cache), "n_studies": len(read.cache.studies),
                              "errors": read.errors, "total_steps": self.train_cfg.total_steps()})
        self.status("training", f"training SS-StyleGAN on {len(read.cache)} slices")
        return read

    def on_progress(self, p: TrainProgress) -> None:
        self.progress.update({
            "step": p.step, "total_steps": p.total_steps, "images_seen": p.images_seen,
            "losses": {k: float(v) for k, v in p.losses.items()}, "elapsed_s": round(p.elapsed, 1),
            "eta_s": None if p.eta_seconds is None else round(p.eta_seconds, 1),
            "images_per_second": round(p.images_per_second, 1),
        })
        now = time.monotonic()
        if now - self.last_write >= STATUS_EVERY_S or p.step >= p.total_steps:
            self.last_write = now
            n = self.progress["n_slices"]
            self.status("training", f"training SS-StyleGAN on {n} slices: step {p.step}/{p.total_steps}")
            log.info("progress: step %d/%d, %d images, losses %s", p.step, p.total_steps, p.images_seen,
                     self.progress["losses"])

    def on_milestone(self, m: Milestone) -> None:
        """Training is paused here (its clock too): embed, map and publish what it has learnt so far, so
        suggestions start within minutes and get better while training goes on."""
        read = self.read
        assert read is not None
        training = {"step": m.step, "total_steps": m.total_steps, "kimg": round(m.images_seen / 1000.0, 3),
                    "minutes": round(m.elapsed / 60.0, 2), "final": m.final}
        self.progress.update({"phase": "map", "map_training": training})
        self.status("training", f"embedding {len(read.cache)} slices and drawing the map of step {m.step}"
                    + ("" if m.final else " (training goes on afterwards)"))
        rec = self.progress.get("losses", {}).get("loss/E_rec")
        training["reconstruction_error"] = None if rec is None else round(float(rec), 4)
        slice_map, projector = map_from_checkpoint(
            read.cache, m.checkpoint, perplexity=self.recipe.perplexity, random_state=self.recipe.random_state,
            device=self.device, batch_size=max(self.train_cfg.batch_size, 64), errors=read.errors,
            fingerprints=read.fingerprints, training=training, n_jobs=os.cpu_count() or 1)
        if self.previous is None and not self.published and self.workspace.has_map():
            try:   # the map an earlier run published: is this one still alike?
                self.previous = self.workspace.load_map()
            except Exception as err:  # a damaged version is the server's to repair; the summary just goes without
                log.warning("no neighbour stability for this map: the previous one cannot be read (%s)", err)
        stability = neighbour_stability(self.previous, slice_map)
        training["neighbour_stability"] = None if stability is None else round(stability, 3)
        pictures = [p for p in (m.checkpoint.parent / n for n in PICTURE_NAMES) if p.is_file()]
        version = self.workspace.publish(slice_map, m.checkpoint, projector, pictures=pictures)
        self.previous = slice_map
        self.published.append(version.name)
        self.progress.setdefault("learning", []).append(
            {k: training[k] for k in ("step", "kimg", "reconstruction_error", "neighbour_stability")})
        self.progress.update({"phase": "train", "maps_published": len(self.published), "map_version": version.name,
                              "model_version": m.model_version})
        log.info("published map %s: step %d, %.1f kimg, %.1f minutes of training%s", version.name, m.step,
                 training["kimg"], training["minutes"], " (final)" if m.final else "")


def neighbour_stability(before: SliceMap | None, after: SliceMap, k: int = NEIGHBOURS,
                        sample: int = STABILITY_SAMPLE, seed: int = 0) -> float | None:
    """How much of each slice's map neighbourhood a new map keeps: the mean fraction of a slice's ``k`` nearest
    neighbours in ``before``'s 2-D map that are among its ``k`` nearest in ``after``'s, over a sample of slices.
    Near 1 the map has settled; low values while training goes on mean the model still changes what is alike.
    None without a previous map of the same slices."""
    if before is None or len(before) != len(after) or len(after) <= k or \
            not (np.array_equal(before.image_ids, after.image_ids) and np.array_equal(before.slices, after.slices)):
        return None
    rows = np.random.default_rng(seed).permutation(len(after))[:sample]
    near = [NearestNeighbors(n_neighbors=k + 1).fit(m.xy).kneighbors(m.xy[rows], return_distance=False)[:, 1:]
            for m in (before, after)]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(*near)]))
