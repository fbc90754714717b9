"""One datastore's model state on disk: slice cache, checkpoints, slice map, training status.

Layout of a workspace folder (by default ``<studies>/.ss_stylegan/``)::

    cache/            SliceCache of every study (memory-mapped uint8 slices)
    checkpoints/      training output (state_dict + JSON config checkpoints, metrics)
    maps/<name>/      one published version (``<time>-<model version>``), written completely before it is
                      made current and never changed afterwards:
        checkpoint/       the checkpoint the slice map was made with
        projection/       saved TSNEProjector (reference W and 2-D map)
        slice_map.npz     every embedded slice: image id, slice index, world position, W, map position
        slice_map.json    model version, number of slices, errors, depths and fingerprints per study, and
                          the name of its arrays file (``slice_map-<n>.npz`` in versions written before);
                          written last, so a folder with it is complete
    current.json      ``{"current": "maps/<name>", "previous": "maps/<name>" | null, "model_version"}``:
                      the pointer readers follow, replaced atomically (a single rename) by a publish
    publish.lock      held (flock) while a version folder is created and while the pointer is checked and
                      switched, so publishing is atomic across processes (server and training)
    status.json       training state and progress (written atomically by the training process)
    train.lock        held (flock) by the running training, which writes its PID into it
    STOP              present while a stop is requested; the training loop polls it

The slice map is what makes suggestions and classification cheap: they only read it. Every write is
atomic, so the server (reading) and the training subprocess (writing) never see half a file.

Publishing, updating and repairing map versions is :mod:`ss_stylegan.maps.versions`; the map itself is
:mod:`ss_stylegan.maps.slice_map`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from ss_stylegan.maps.versions import (
    MapVersions,
)
from ss_stylegan.storage.atomic import atomic_write_text
from ss_stylegan.training.lock import TrainingLock

log = logging.getLogger(__name__)

STATES = ("untrained", "training", "ready", "failed")
@dataclasses.dataclass
class TrainingStatus:
    """What the training process last reported. ``progress`` holds images seen, losses, time left."""

    state: str = "untrained"
    message: str = ""
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)
    updated: float = 0.0
    pid: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Workspace(MapVersions):
    """Paths and atomic readers/writers of one datastore's model state: the published map versions
    (:class:`~ss_stylegan.maps.versions.MapVersions`), the slice cache, checkpoints, training status and stop flag.

    Args:
        root: the workspace folder (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.cache_dir = self.root / "cache"
        self.checkpoint_dir = self.root / "checkpoints"
        self.status_path = self.root / "status.json"
        self.stop_path = self.root / "STOP"     # present while a stop is requested

    def checkpoint_dir_for(self, model_config: dict[str, Any]) -> Path:
        """Checkpoint folder of one model configuration, so changing ``--conf`` settings starts a new run
        (and changing them back resumes the old one) instead of failing on a mismatched checkpoint."""
        digest = hashlib.sha1(json.dumps(model_config, sort_keys=True).encode()).hexdigest()[:10]
        return self.checkpoint_dir / f"model-{digest}"

    def training_lock(self) -> TrainingLock:
        """The lock a training process holds while it runs (``train.lock``: one training per workspace)."""
        return TrainingLock(self.root / "train.lock")

    # -- training status ------------------------------------------------------------------------------
    def read_status(self) -> TrainingStatus:
        """The training's status as it is now: the last status written (``untrained`` when none, or an
        unreadable one), except that a ``training`` status whose process no longer holds the training lock
        (stopped, killed, or ended without a last word) is answered as what it left behind: ``ready`` with a
        map, else ``untrained``, saying where it stopped. Only a running training reports a ``pid``."""
        status = self._status_on_disk()
        if status.state != "training":
            return dataclasses.replace(status, pid=None)
        if self.training_lock().holder() is not None:
            return status
        progress = status.progress
        step, total = progress.get("step"), progress.get("total_steps")
        where = f" at step {step}/{total}" if step is not None and total else ""
        return TrainingStatus(
            state="ready" if self.has_map() else "untrained",
            message=f"training stopped{where} (stopped on request, killed, or its process ended); "
                    "POST /train/ss_stylegan resumes from the last checkpoint",
            progress={**progress, "phase": "stopped"}, updated=status.updated, pid=None)

    def _status_on_disk(self) -> TrainingStatus:
        try:
            data = json.loads(self.status_path.read_text(encoding="utf-8"))
            return TrainingStatus(**{k: data[k] for k in data if k in TrainingStatus.__dataclass_fields__})
        except FileNotFoundError:
            return TrainingStatus()
        except (ValueError, TypeError) as err:
            log.error("unreadable status file %s: %s", self.status_path, err)
            return TrainingStatus()

    def write_status(self, status: TrainingStatus) -> None:
        if status.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {status.state!r}")
        status.updated = time.time()
        atomic_write_text(self.status_path, json.dumps(status.to_dict(), indent=1, default=float))

    # -- stop flag ----------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        atomic_write_text(self.stop_path, str(time.time()))

    def clear_stop(self) -> None:
        self.stop_path.unlink(missing_ok=True)

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

