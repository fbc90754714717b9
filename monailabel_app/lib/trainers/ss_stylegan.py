"""Trainer ``ss_stylegan``: unlabelled SS-StyleGAN training, then the slice map of every slice, published at
each milestone (:mod:`ss_stylegan.maps.lifecycle`). Runs in MONAI Label's training subprocess, holding the
workspace's training lock (with its PID) so a server started later finds, reports and can stop it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from ss_stylegan.config import ConfigError, TrainConfig
from ss_stylegan.maps.lifecycle import MapRecipe, train_and_publish
from ss_stylegan.model.devices import resolve_device
from ss_stylegan.workspace import TrainingStatus, Workspace

from lib.configs.settings import TRAIN_REQUEST_KEYS, AppSettings, train_config


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
            self.workspace.write_status(TrainingStatus(state="failed", message=f"invalid training request: {err}",
                                                       pid=os.getpid()))
            raise
        with self.workspace.training_lock().hold():
            return run_training(self.workspace, self.studies, self.settings, train_cfg, device)


def run_training(workspace: Workspace, studies: Path, settings: AppSettings, train_cfg: TrainConfig,
                 device: str) -> dict[str, Any]:
    """The app's settings as a :class:`MapRecipe`, then :func:`train_and_publish`."""
    recipe = MapRecipe(slice_cfg=settings.slice_cfg, model_cfg=settings.model_cfg, perplexity=settings.perplexity,
                       random_state=settings.random_state, gpus=settings.gpus)
    return train_and_publish(workspace, studies, recipe, train_cfg, device)
