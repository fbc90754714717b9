"""Start, stop and report training: one training at a time per workspace, also across server restarts.

MONAI Label knows only the training subprocess its own server process started. After ``kill -9`` of the
server that subprocess runs on, and a restarted server neither sees it nor can stop it; MONAI Label's
generic ``POST /train/`` would even queue another. Here the workspace's training lock
(:class:`~ss_stylegan.training.lock.TrainingLock`, held by the training process with its PID) is the
authority: a start is refused with 409 while MONAI Label has a task submitted or running *or* any process
holds the lock; the status reports a holder that MONAI Label does not know; a stop ends it (``STOP`` file,
then SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from monailabel.endpoints import train as train_endpoint
from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import processes
from monailabel.utils.async_tasks.utils import tasks as async_tasks

from ss_stylegan.training.lock import TrainingBusyError
from ss_stylegan.workspace import Workspace

from lib.errors import NotFoundError

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # a training that ignores the STOP file this long gets SIGTERM, then as long again SIGKILL


class TrainControl:
    """Training lifecycle of one workspace.

    Args:
        workspace: the datastore's model state (its ``train.lock``, ``STOP`` and status files).
        trainers: the trainer names the app offers.
    """

    def __init__(self, workspace: Workspace, trainers: tuple[str, ...],
                 in_effect: Callable[[Any, dict[str, Any]], Any] = lambda task, params: task) -> None:
        self.workspace = workspace
        self.in_effect = in_effect   # the answer's request as this app runs it (lib.answers.training_started)
        self.lock = workspace.training_lock()
        self.trainers = trainers
        self._submit = threading.Lock()  # two quick requests must not both pass the checks

    def running(self) -> bool:
        """Whether a training runs now: MONAI Label's subprocess, or any process holding the lock."""
        return bool(processes("train")) or self.lock.holder() is not None

    def start(self, model: str | None, params: dict[str, Any], run_sync: bool = False) -> Any:
        """Start ``model`` (every trainer when None, as MONAI Label's ``POST /train/``) unless one runs.

        Raises:
            NotFoundError: an unknown trainer.
            TrainingBusyError: a training is submitted or running (here or in another process).
        """
        models = [model] if model else list(self.trainers)
        for name in models:
            if name not in self.trainers:
                raise NotFoundError(f"unknown trainer {name!r}; this app's trainers are {list(self.trainers)}")
        with self._submit:
            busy = [t for t in async_tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")]
            if busy:
                raise TrainingBusyError(None, f"task {busy[0]['id']}, started {busy[0]['start_ts']}")
            holder = self.lock.holder()
            if holder is not None:
                raise TrainingBusyError(holder)
            if model:
                return self.in_effect(train_endpoint.run_model(model, params, run_sync, False), params)
            return {name: {"result": self.in_effect(train_endpoint.run_model(name, params, run_sync, False), params),
                           "detail": None} for name in models[:1]}  # one trainer at a time, as a second would be refused anyway

    def stop(self) -> dict[str, Any]:
        """Stop the running training: MONAI Label's own subprocess, else the lock's holder.

        A training submitted a moment ago may not have its subprocess yet (MONAI Label spawns it from a
        worker thread); the stop waits for it rather than answer that nothing runs and let it start.
        """
        deadline = time.monotonic() + STOP_GRACE_S
        while not processes("train") and time.monotonic() < deadline and any(
                t.get("status") == "SUBMITTED" for t in async_tasks("train")):
            time.sleep(0.05)
        if processes("train"):
            task = train_endpoint.stop() or {}
            deadline = time.monotonic() + STOP_GRACE_S
            while self.lock.holder() is not None and time.monotonic() < deadline:  # killed, not yet gone
                time.sleep(0.05)
            return task
        holder = self.lock.stop_holder(self.workspace.request_stop, grace_s=STOP_GRACE_S)
        if holder is None:
            return {"status": "NONE", "detail": "no training is running"}
        log.warning("stopped training process %s, started by an earlier server process", holder.pid)
        return {"status": "STOPPED", "pid": holder.pid,
                "detail": f"stopped the training process {holder.pid} started {holder.started_text} "
                          "(by an earlier server process); POST /train/ss_stylegan resumes from its last checkpoint"}

    def status(self, all_tasks: bool = False, check_if_running: bool = False) -> dict[str, Any]:
        """MONAI Label's training status, or a report of a lock holder that MONAI Label does not know.

        Raises:
            NotFoundError: ``check_if_running`` and nothing runs (MONAI Label's 404).
        """
        res, detail = AsyncTask.status("train", all_tasks, check_if_running)
        holder = None if processes("train") else self.lock.holder()
        if holder is not None:
            orphan = {"status": "RUNNING", "pid": holder.pid, "start_ts": holder.started_text,
                      "detail": f"a training started by an earlier server process is running (process "
                                f"{holder.pid}, started {holder.started_text}); DELETE /train/ stops it"}
            if isinstance(res, list):
                return {"tasks": res, **orphan}
            return orphan
        if res is None:
            if check_if_running:
                raise NotFoundError(detail)
            return {"status": "NONE", "detail": detail}
        return {"tasks": res} if isinstance(res, list) else dict(res)
