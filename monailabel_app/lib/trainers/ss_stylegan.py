"""Trainer ``ss_stylegan``: unlabelled SS-StyleGAN training, then the slice map (W + t-SNE) of every slice.

Runs in MONAI Label's training subprocess. Steps, each reported in the workspace status file that the
server shows in ``GET /info/`` and ``GET /train/``:

1. build (or update) the slice cache of every study in the datastore;
2. train SS-StyleGAN on one device, or with ``--conf gpus`` on one process per GPU (``torch.distributed``:
   this process is rank 0, see :func:`ss_stylegan.training.launcher.launch`), resuming from the last checkpoint
   (with any number of GPUs); stoppable by ``DELETE /train/``, which kills this process, or by the
   workspace ``STOP`` file. The process holds the workspace's training lock
   (:class:`~ss_stylegan.training.lock.TrainingLock`, with its PID) while it runs, so a server started
   later finds, reports and can stop it;
3. at every milestone (every ``publish_minutes`` of training, and at the end, when kimg or the
   ``train_minutes`` budget is reached) training pauses while every slice is embedded into W with the
   encoder of that checkpoint and the t-SNE map is fitted (:func:`ss_stylegan.maps.build.map_from_checkpoint`);
   checkpoint, projector and slice map are published as one new version folder made current by a single
   atomic pointer switch (:meth:`Workspace.publish`). Suggestions start with the first map and improve with
   each; labels are stored by study and slice, so they carry over. A training killed mid-publish leaves
   the previous version in use.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from ss_stylegan.model.checkpoint import latest_checkpoint, read_record
from ss_stylegan.config import ConfigError, TrainConfig
from ss_stylegan.model.devices import resolve_device
from ss_stylegan.training.launcher import launch
from ss_stylegan.maps.build import map_from_checkpoint, read_studies
from ss_stylegan.training.loop import Milestone, TrainProgress
from ss_stylegan.workspace import TrainingStatus, Workspace

from lib.configs.settings import TRAIN_REQUEST_KEYS, AppSettings, train_config

log = logging.getLogger(__name__)


class SSStyleGANTrainer(TrainTask):
    """MONAI Label training task over the whole datastore (no labels needed).

    Request fields (all optional): ``kimg``, ``steps``, ``minutes`` (training-time budget over all sessions),
    ``batch_size``, ``device``.
    """

    def __init__(self, settings: AppSettings, studies: str | Path) -> None:
        super().__init__("SS-StyleGAN: self-supervised StyleGAN2 + encoder on every slice, then the t-SNE slice map")
        self.settings = settings
        self.studies = Path(studies)
        self.workspace = Workspace(settings.workspace)

    def config(self) -> dict[str, Any]:
        cfg = self.settings.train_cfg
        return {"kimg": cfg.kimg, "steps": cfg.steps, "minutes": cfg.max_minutes, "batch_size": cfg.batch_size,
                "device": self.settings.device}

    def stats(self) -> dict[str, Any]:
        return self.workspace.read_status().to_dict()

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        try:
            train_cfg = train_config(self.settings.train_cfg,
                                     {k: request[k] for k in TRAIN_REQUEST_KEYS if k in request and k != "device"})
            device = resolve_device(str(request.get("device", self.settings.device)))
        except ConfigError as err:
            self._status("failed", f"invalid training request: {err}")
            raise
        with self.workspace.training_lock().hold():
            return run_training(self.workspace, self.studies, self.settings, train_cfg, device)

    def _status(self, state: str, message: str, progress: Mapping[str, Any] | None = None) -> None:
        self.workspace.write_status(TrainingStatus(state=state, message=message, progress=dict(progress or {}),
                                                   pid=os.getpid()))


def run_training(
    workspace: Workspace, studies: Path, settings: AppSettings, train_cfg: TrainConfig, device: str
) -> dict[str, Any]:
    """Cache -> train -> embed -> map, with status updates; returns a summary (also the final status)."""
    t_start = time.monotonic()
    progress: dict[str, Any] = {"phase": "cache"}

    def status(state: str, message: str) -> None:
        workspace.write_status(TrainingStatus(state=state, message=message, progress=dict(progress), pid=os.getpid()))

    workspace.clear_stop()
    try:
        status("training", "reading and caching every slice of the datastore")
        read = read_studies(studies, settings.slice_cfg, workspace.cache_dir)
        cache, errors, fingerprints = read.cache, read.errors, read.fingerprints
        if len(cache) < 4:
            raise ValueError(
                f"only {len(cache)} usable slice(s) in {studies} (at least 4 are needed); add studies"
                + (f"; unreadable: {errors}" if errors else "")
            )
        progress.update({"phase": "train", "n_slices": len(cache), "n_studies": len(cache.studies),
                         "errors": errors, "total_steps": train_cfg.total_steps()})
        status("training", f"training SS-StyleGAN on {len(cache)} slices")
        last_write = [0.0]

        def on_progress(p: TrainProgress) -> None:
            progress.update({
                "step": p.step, "total_steps": p.total_steps, "images_seen": p.images_seen,
                "losses": {k: float(v) for k, v in p.losses.items()}, "elapsed_s": round(p.elapsed, 1),
                "eta_s": None if p.eta_seconds is None else round(p.eta_seconds, 1),
                "images_per_second": round(p.images_per_second, 1),
            })
            now = time.monotonic()
            if now - last_write[0] >= 0.5 or p.step >= p.total_steps:
                last_write[0] = now
                status("training", f"training SS-StyleGAN on {len(cache)} slices: step {p.step}/{p.total_steps}")
                log.info("progress: step %d/%d, %d images, losses %s", p.step, p.total_steps, p.images_seen,
                         progress["losses"])

        out_dir = workspace.checkpoint_dir_for(settings.model_cfg.to_dict())
        previous = latest_checkpoint(out_dir) if train_cfg.resume else None
        progress["resumed_from_step"] = int(read_record(previous)["step"]) if previous is not None else 0
        published: list[str] = []

        def on_milestone(m: Milestone) -> None:
            # training is paused here (its clock too): embed, map and publish what it has learnt so far,
            # so suggestions start within minutes and get better while training goes on
            training = {"step": m.step, "total_steps": m.total_steps, "kimg": round(m.images_seen / 1000.0, 3),
                        "minutes": round(m.elapsed / 60.0, 2), "final": m.final}
            progress.update({"phase": "map", "map_training": training})
            status("training", f"embedding {len(cache)} slices and drawing the map of step {m.step}"
                   + ("" if m.final else " (training goes on afterwards)"))
            slice_map, projector = map_from_checkpoint(
                cache, m.checkpoint, perplexity=settings.perplexity, random_state=settings.random_state,
                device=device, batch_size=max(train_cfg.batch_size, 64), errors=errors,
                fingerprints=fingerprints, training=training, n_jobs=os.cpu_count() or 1)
            version = workspace.publish(slice_map, m.checkpoint, projector)
            published.append(version.name)
            progress.update({"phase": "train", "maps_published": len(published), "map_version": version.name,
                             "model_version": m.model_version})
            log.info("published map %s: step %d, %.1f kimg, %.1f minutes of training%s", version.name, m.step,
                     training["kimg"], training["minutes"], " (final)" if m.final else "")

        # one process on `device`, or one per GPU of --conf gpus (rank 0 is this process: callbacks as usual)
        result = launch(cache.images, settings.model_cfg, train_cfg, out_dir, gpus=settings.gpus,
                        progress=on_progress, should_stop=workspace.stop_requested, device=device,
                        progress_bar=False, on_milestone=on_milestone)
        if result.stopped:
            workspace.clear_stop()
            progress["phase"] = "stopped"
            status("ready" if workspace.has_map() else "untrained",
                   "training stopped on request; POST /train/ss_stylegan resumes from the last checkpoint")
            return {"stopped": True, **progress}
        progress.update({"phase": "done", "elapsed_s": round(time.monotonic() - t_start, 1),
                         "out_of_time": result.out_of_time})
        why = " (its time budget ran out)" if result.out_of_time else ""
        status("ready", f"model {progress.get('model_version')}: {len(cache)} slices embedded and mapped{why}")
        return dict(progress)
    except BaseException as err:
        progress["phase"] = "failed"
        status("failed", f"{type(err).__name__}: {err}")
        raise

