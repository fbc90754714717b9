"""The live slice map of one datastore: the published map, kept in step with the studies folder.

:class:`LiveSliceMap` serves the current :class:`~ss_stylegan.workspace.SliceMap` to request handlers and
embeds studies added after training into it in a background thread (never refitting the map).

Concurrency: request handlers never wait for an embedding. The current map is an immutable snapshot
swapped in one assignment; reading it takes no lock unless the files on disk changed. The background
embedding works on a snapshot without any lock and takes the map lock only to check that the published
version is unchanged and to save and swap the extended map. A failed embedding is retried after a
back-off. The studies in the folder (this class's own index, which also holds DICOM series folders that
MONAI Label's datastore does not list) decide which image ids exist.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.data.cache import IGNORED_NAMES, Study, find_studies, read_study_slices
from ss_stylegan.data.readers import StudyReadError, is_volume_file
from ss_stylegan.workspace import SliceMap, Workspace, WorkspaceError

from lib.configs.settings import AppSettings
from lib.embedder import MapEmbedder

log = logging.getLogger(__name__)

# a failed background embedding is retried after this many seconds, doubled after each failure up to the cap
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0


class LiveSliceMap:
    """The current slice map of a workspace plus the studies of a folder, embedded as they arrive.

    Args:
        settings: parsed ``--conf`` settings.
        studies: the datastore folder.
        workspace: the datastore's model state.
        training_running: callable telling whether MONAI Label's training subprocess runs now (no
            background embedding meanwhile: the training publishes a map of every study).
    """

    def __init__(self, settings: AppSettings, studies: Path, workspace: Workspace,
                 training_running: Callable[[], bool]) -> None:
        self.settings = settings
        self.studies = Path(studies)
        self.workspace = workspace
        self.training_running = training_running
        self.embedder = MapEmbedder(workspace, settings)
        # (stamp on disk, map): replaced in one assignment, read without a lock
        self._current: tuple[Any, SliceMap | None] = (None, None)
        self._map_lock = threading.Lock()  # loading a changed map; checking + swapping an extended one
        self.problem = ""  # why the map on disk could not be loaded (the previous one stays in use)
        self._gone: tuple[Any, np.ndarray] = ((), np.zeros(0, dtype=np.int64))
        self._scan_cache: tuple[int | None, list[Study], list[str], dict[str, Study]] = (None, [], [], {})
        self._refresh_lock = threading.Lock()
        self._refresh_thread: threading.Thread | None = None
        self.embedding: frozenset[str] = frozenset()  # image ids being embedded now
        self.failed: dict[str, str] = {}  # image id -> why its embedding failed (retried after a back-off)
        self._retry_at = 0.0
        self._retry_s = RETRY_FIRST_S

    # -- slice map --------------------------------------------------------------------------------------
    def current(self) -> SliceMap | None:
        """The current map (reloaded when training or a refresh rewrote it), or None before training.

        Costs a few file stats when nothing changed; takes a lock only to load a changed map. When the
        map on disk cannot be read, the map loaded before stays in use (and the problem is reported).
        """
        stamp = self.workspace.map_stamp()
        current = self._current
        if stamp == current[0]:
            return current[1]
        with self._map_lock:
            return self._load_map(stamp)

    def _load_map(self, stamp: Any) -> SliceMap | None:
        """Load the map of ``stamp`` unless already loaded. Caller holds ``_map_lock``."""
        if stamp == self._current[0]:
            return self._current[1]
        if stamp is None:
            self._current, self.problem = (None, None), ""
            return None
        previous = self._current[1]
        try:
            slice_map = self.workspace.load_map()
            self.problem = ""
            log.info("slice map loaded: %d slices, model %s", len(slice_map), slice_map.model_version)
        except WorkspaceError as err:
            self.problem = str(err)
            log.error("%s; still using the previous slice map", err)
            slice_map = previous
        self._current = (stamp, slice_map)
        return slice_map

    def _scan(self) -> tuple[int | None, list[Study], list[str], dict[str, Study]]:
        """``(stamp, studies, ignored file names, studies by id)`` of the studies folder, rescanned only
        when the folder changes."""
        stamp = self.studies.stat().st_mtime_ns
        cached = self._scan_cache
        if cached[0] != stamp:
            ignored = [
                e.name for e in sorted(self.studies.iterdir(), key=lambda p: p.name)
                if not (e.name.startswith(".") or e.name in IGNORED_NAMES or e.is_dir() or is_volume_file(e))
            ]
            studies = find_studies(self.studies)
            cached = (stamp, studies, ignored, {s.image_id: s for s in studies})
            self._scan_cache = cached
        return cached

    def study(self, image_id: str) -> Study | None:
        """The study (file or DICOM series folder) of an image id, or None when the folder has none."""
        return self._scan()[3].get(image_id)

    def ignored_files(self) -> list[str]:
        """Files in the studies folder that are not studies (not images), so a user sees why they are unused."""
        return list(self._scan()[2])

    def maybe_refresh(self) -> bool:
        """Start a background embedding of studies missing from the map; return whether one was started.

        Studies whose embedding failed are retried once their back-off has passed (2 s, doubling up to
        5 min), e.g. after a publish that was interrupted is completed by the next training.
        """
        slice_map = self.current()
        if slice_map is None or self.training_running():
            return False
        known = slice_map.image_set() | set(slice_map.errors) | set(slice_map.depths)
        if time.monotonic() < self._retry_at:
            known |= set(self.failed)
        new = [s for s in self._scan()[1] if s.image_id not in known]
        if not new:
            return False
        with self._refresh_lock:
            if self._refresh_thread is not None and self._refresh_thread.is_alive():
                return False
            self.embedding = frozenset(s.image_id for s in new)
            self._refresh_thread = threading.Thread(
                target=self._refresh, args=(new,), name="ss_stylegan-refresh", daemon=True
            )
            self._refresh_thread.start()
        return True

    def wait_refresh(self, timeout_s: float = 60.0) -> None:
        """Wait for a running background embedding (tests and tools; request handlers never wait)."""
        thread = self._refresh_thread
        if thread is not None:
            thread.join(timeout_s)

    def _refresh(self, studies: list[Study]) -> None:
        """Embed ``studies`` into a snapshot of the map without holding any lock, then check the model
        version and save + swap the extended map under ``_map_lock``."""
        t0 = time.monotonic()
        ids: list[str] = []
        try:
            snapshot = self.current()
            if snapshot is None:
                return
            slices, positions, ws, xys, depths, errors = [], [], [], [], {}, {}
            for study in studies:
                try:
                    study_slices = read_study_slices(study.path, self.settings.slice_cfg, study.image_id)
                except StudyReadError as err:
                    errors[study.image_id] = str(err)
                    continue
                depths[study.image_id] = study_slices.n_slices
                if len(study_slices.images) == 0:
                    continue
                w, xy = self.embedder.embed_and_place(study_slices.images, snapshot)
                ids += [study.image_id] * len(w)
                slices.append(study_slices.slice_indices)
                positions.append(study_slices.positions)
                ws.append(w)
                xys.append(xy)
            with self._map_lock:
                current = self._load_map(self.workspace.map_stamp())
                if current is None or current.version != snapshot.version or \
                        current.model_version != snapshot.model_version:
                    log.info("a new model was published while %d studies were embedded; they are embedded "
                             "into the new map next", len(studies))
                    return
                if current.image_set() & set(ids) or set(current.depths) & set(depths):
                    log.info("these studies were embedded meanwhile; dropping this embedding")
                    return
                w_dim = current.w.shape[1]
                new_map = current.extended(
                    np.asarray(ids, dtype=str),
                    np.concatenate(slices) if slices else np.zeros(0, dtype=np.int64),
                    np.concatenate(positions) if positions else np.zeros((0, 3)),
                    np.concatenate(ws) if ws else np.zeros((0, w_dim), dtype=np.float32),
                    np.concatenate(xys) if xys else np.zeros((0, 2), dtype=np.float32),
                    errors=errors, depths=depths,
                )
                assert current.version is not None
                self.workspace.save_map(new_map, current.version)
                self._current = (self.workspace.map_stamp(), new_map)
            for image_id in {s.image_id for s in studies}:
                self.failed.pop(image_id, None)
            self._retry_s = RETRY_FIRST_S
            log.info("embedded %d new slices of %d new studies in %.2f s", len(ids), len(studies),
                     time.monotonic() - t0)
        except Exception as err:  # a background thread must report, not die silently
            log.exception("embedding new studies failed; retrying in %.0f s", self._retry_s)
            for study in studies:
                self.failed[study.image_id] = f"embedding failed (retried automatically): {err}"
            self._retry_at = time.monotonic() + self._retry_s
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        finally:
            self.embedding = frozenset()

    def removed_rows(self, slice_map: SliceMap) -> np.ndarray:
        """Rows of the map whose image has left the studies folder (never suggested), cached per map
        (model version, size and the stamp it was loaded with) and set of studies."""
        studies = frozenset(self._scan()[3])
        stamp, current = self._current
        key = (slice_map.model_version, len(slice_map), stamp if current is slice_map else None, studies)
        cached = self._gone
        if key[2] is None or cached[0] != key:
            gone = slice_map.image_set() - studies
            rows = np.concatenate([slice_map.rows_of(i) for i in gone]) if gone else np.zeros(0, dtype=np.int64)
            cached = (key, rows)
            if key[2] is not None:
                self._gone = cached
        return cached[1]
