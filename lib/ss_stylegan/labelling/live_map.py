"""The live slice map of one datastore: the published map, kept in step with the studies folder.

:class:`LiveSliceMap` serves the current :class:`~ss_stylegan.maps.slice_map.SliceMap` to request handlers and,
in a background thread, keeps it in step with the studies folder (never refitting the map):

- studies added after training are embedded into it;
- studies deleted from the folder leave it (their points, and with them the 1-NN reference);
- studies changed on disk (rewritten, truncated, replaced by another of the same name) are found by a
  sweep at most every ``SWEEP_S`` seconds (less often when one sweep takes longer than ``SWEEP_MAX_LOAD``
  of that: thousands of studies) that compares each study's stamp (size, times, inode) with the
  one recorded in the map and, when it differs, its SHA-256: a changed study's points are dropped and
  it is read again (an unreadable one is reported in ``errors``); a study only touched is kept.
  Until then, a request that meets a study whose stamp changed treats it as being re-read.

Concurrency: request handlers never wait for an embedding. The current map is an immutable snapshot
swapped in one assignment; reading it takes no lock unless the files on disk changed. The background
embedding works on a snapshot without any lock and takes the map lock only to check that the published
version is unchanged and to publish and swap the updated map. The update is published as a new version
(:meth:`~ss_stylegan.workspace.Workspace.publish_update`; published versions never change), made current
only if the version it updates still is: a training that published meanwhile wins, and the studies are
embedded into its map next. A failed embedding is retried after a
back-off. The studies in the folder (:class:`~ss_stylegan.labelling.studies.StudyIndex`, which also holds DICOM
series folders that MONAI Label's datastore does not list) decide which image ids exist.

Getters (:meth:`current`, :meth:`is_stale`, :meth:`removed_rows`) never start work; :meth:`maybe_refresh`
is the one call that does, made once per request by the labelling service's ``sync``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.cache import Study, read_study_slices
from ss_stylegan.data.fingerprint import Fingerprint, FingerprintCache
from ss_stylegan.data.fingerprint import stamp as study_stamp
from ss_stylegan.data.readers import StudyReadError
from ss_stylegan.labelling.studies import StudyIndex
from ss_stylegan.maps.placement import MapEmbedder
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.maps.versions import (
    DamagedVersionError,
    StaleVersionError,
    WorkspaceError,
)
from ss_stylegan.workspace import Workspace

log = logging.getLogger(__name__)

# a failed background embedding is retried after this many seconds, doubled after each failure up to the cap
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 300.0
SWEEP_S = 1.0  # studies on disk are compared with the map at most this often
# a sweep runs at most every SWEEP_S and, with thousands of studies, at most this fraction of the time
SWEEP_MAX_LOAD = 0.05


class _Loaded(NamedTuple):
    """The map in use and the stamp on disk it was loaded with; replaced in one assignment, read without a lock."""

    stamp: Any
    slice_map: SliceMap | None


class _RowsFor(NamedTuple):
    key: Any
    rows: np.ndarray
    studies: Any = None   # the folder listing's {image id: study} the rows were found with


class _Difference(NamedTuple):
    """Studies of the folder not in the map (``new``) and of the map not in the folder (``gone``), for a map,
    a listing of the folder and the failed studies (``key``)."""

    key: Any
    slice_map: SliceMap | None
    by_id: Any
    new: list[Study]
    gone: frozenset[str]


@dataclasses.dataclass
class _Placed:
    """Slices of new or changed studies placed into a map, not yet published."""

    w_dim: int
    ids: list[str] = dataclasses.field(default_factory=list)
    slices: list[np.ndarray] = dataclasses.field(default_factory=list)
    positions: list[np.ndarray] = dataclasses.field(default_factory=list)
    ws: list[np.ndarray] = dataclasses.field(default_factory=list)
    xys: list[np.ndarray] = dataclasses.field(default_factory=list)
    depths: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    fingerprints: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(image ids, slices, positions, W, map positions)`` of every placed slice."""
        return (np.asarray(self.ids, dtype=str),
                np.concatenate(self.slices) if self.slices else np.zeros(0, dtype=np.int64),
                np.concatenate(self.positions) if self.positions else np.zeros((0, 3)),
                np.concatenate(self.ws) if self.ws else np.zeros((0, self.w_dim), dtype=np.float32),
                np.concatenate(self.xys) if self.xys else np.zeros((0, 2), dtype=np.float32))


class LiveSliceMap:
    """The current slice map of a workspace plus the studies of a folder, embedded as they arrive.

    Args:
        studies: the studies of the datastore folder.
        workspace: the datastore's model state.
        slice_cfg: how slices are read (the training's).
        device: where the published encoder runs.
        training_running: callable telling whether a training runs now (no background embedding meanwhile:
            the training publishes a map of every study).
        fingerprints: the content hashes of study files (shared with the label flags).
    """

    def __init__(self, studies: StudyIndex, workspace: Workspace, slice_cfg: SliceConfig, device: str,
                 training_running: Callable[[], bool], fingerprints: FingerprintCache | None = None) -> None:
        self.fingerprints = fingerprints or FingerprintCache()
        self.studies = studies
        self.slice_cfg = slice_cfg
        self.workspace = workspace
        self.training_running = training_running
        self.embedder = MapEmbedder(workspace, device)
        # (stamp on disk, map): replaced in one assignment, read without a lock
        self._current = _Loaded(None, None)
        self._map_lock = threading.Lock()  # loading a changed map; checking + swapping an extended one
        self.problem = ""  # why the map on disk could not be loaded (the previous one stays in use)
        self._gone = _RowsFor((), np.zeros(0, dtype=np.int64))
        self._refresh_lock = threading.Lock()
        self._refresh_thread: threading.Thread | None = None
        self.embedding: frozenset[str] = frozenset()  # image ids being embedded now
        self.changed: frozenset[str] = frozenset()  # image ids whose files changed since they were embedded
        self.failed: dict[str, str] = {}  # image id -> why its embedding failed (retried after a back-off)
        self._retry_at = 0.0
        self._retry_s = RETRY_FIRST_S
        self._next_sweep = 0.0
        self._difference_cache = _Difference(None, None, None, [], frozenset())

    # -- slice map --------------------------------------------------------------------------------------
    def current(self) -> SliceMap | None:
        """The current map (reloaded when training or a refresh rewrote it), or None before training.

        Costs a few file stats when nothing changed; takes a lock only to load a changed map. When the
        map on disk cannot be read, the map loaded before stays in use (and the problem is reported).
        """
        stamp = self.workspace.map_stamp()
        current = self._current
        if stamp == current.stamp:
            return current.slice_map
        with self._map_lock:
            return self._load_map(stamp)

    def _load_map(self, stamp: Any) -> SliceMap | None:
        """Load the map of ``stamp`` unless already loaded. Caller holds ``_map_lock``."""
        if stamp == self._current.stamp:
            return self._current.slice_map
        if stamp is None:
            self._current, self.problem = _Loaded(None, None), ""
            return None
        previous = self._current.slice_map
        slice_map: SliceMap | None = previous
        self.problem = ""
        repaired = False
        for _ in range(8):  # each damaged version found is moved aside, so this ends
            try:
                slice_map = self.workspace.load_map()
            except DamagedVersionError as err:
                log.error("%s", err)
                repaired = True
                if self.workspace.repair(str(err), damaged=err.version) is None:
                    slice_map = None
                    break
                continue
            except WorkspaceError as err:
                self.problem = str(err)
                log.error("%s; still using the previous slice map", err)
                slice_map = previous
                break
            log.info("slice map loaded: %d slices, model %s", len(slice_map), slice_map.model_version)
            by_id = self.studies.by_id()
            for image_id, recorded in slice_map.fingerprints.items():
                if image_id in by_id:  # known content hashes: a later check needs no re-hash
                    self.fingerprints.remember(by_id[image_id].path, Fingerprint.from_dict(recorded))
            break
        self._current = _Loaded(self.workspace.map_stamp() if repaired else stamp, slice_map)
        return slice_map

    def is_stale(self, image_id: str, slice_map: SliceMap | None = None) -> bool:
        """Whether the study's file differs from the one the map holds (one ``stat``; no hashing).

        True while a changed study waits to be read again, and for a study whose stamp differs from the
        recorded one (the next sweep, started by :meth:`maybe_refresh`, hashes it: a file only touched is
        then kept)."""
        if image_id in self.changed:
            return True
        slice_map = slice_map if slice_map is not None else self.current()
        recorded = slice_map.fingerprints.get(image_id) if slice_map is not None else None
        study = self.studies.study(image_id)
        if recorded is None or study is None:
            return False
        return Fingerprint.from_dict(recorded).stamp != study_stamp(study.path)

    def maybe_refresh(self) -> bool:
        """Start a background update of the map when something may have changed; return whether one started.

        It runs when studies are new or gone, and at most every ``SWEEP_S`` seconds to compare the
        studies' files with the map. Studies whose embedding failed are retried once their back-off has
        passed (2 s, doubling up to 5 min), e.g. after a publish that was interrupted is completed by the
        next training.
        """
        slice_map = self.current()
        if slice_map is None or self.training_running():
            return False
        new, gone = self._difference(slice_map, time.monotonic() < self._retry_at)
        sweep = time.monotonic() >= max(self._next_sweep, self._retry_at if self.failed else 0.0)
        if not new and not gone and not sweep:
            return False
        with self._refresh_lock:
            if self._refresh_thread is not None and self._refresh_thread.is_alive():
                return False
            self._next_sweep = time.monotonic() + SWEEP_S
            if new:
                self.embedding = frozenset(s.image_id for s in new)
            self._refresh_thread = threading.Thread(
                target=self._refresh, args=(new, gone, sweep), name="ss_stylegan-refresh", daemon=True
            )
            self._refresh_thread.start()
        return True

    def _difference(self, slice_map: SliceMap, backing_off: bool) -> tuple[list[Study], frozenset[str]]:
        """``(studies of the folder not in the map, image ids of the map no longer in the folder)``; studies
        whose embedding failed count as known while ``backing_off``. Kept while the map, the folder's listing
        and the failed studies stay the same (comparing them is O(studies) per request)."""
        by_id = self.studies.by_id()
        failed = frozenset(self.failed) if backing_off else frozenset()
        key = (id(slice_map), id(by_id), failed)
        cached = self._difference_cache
        if cached.key == key and cached.slice_map is slice_map and cached.by_id is by_id:
            return cached.new, cached.gone
        known = slice_map.image_set() | set(slice_map.errors) | set(slice_map.depths)
        gone = frozenset(known - set(by_id))
        known |= failed
        new = [s for s in self.studies.studies() if s.image_id not in known]
        self._difference_cache = _Difference(key, slice_map, by_id, new, gone)
        return new, gone

    def _sweep(self, snapshot: SliceMap) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """Compare every study of the map with its file: ``(changed ids, fingerprints to record)``.

        A study whose stamp matches the recorded one is unchanged. Otherwise its content is hashed: the
        same hash (a touch, a copy of the same bytes) only updates the record; another hash, or no
        recorded hash to compare with while the stamp moved, means changed. A study recorded without any
        fingerprint (a map made before fingerprints existed) is adopted as it is now.
        """
        by_id = self.studies.by_id()
        changed: set[str] = set()
        record: dict[str, dict[str, Any]] = {}
        for image_id in (snapshot.image_set() | set(snapshot.errors) | set(snapshot.depths)) & set(by_id):
            path = by_id[image_id].path
            raw = snapshot.fingerprints.get(image_id)
            recorded = Fingerprint.from_dict(raw) if raw else None
            if recorded is not None and recorded.sha256 and recorded.stamp == study_stamp(path):
                continue
            current = self.fingerprints.fingerprint(path)
            if current is None or current.sha256 is None:  # vanished or still being written
                changed.add(image_id)
            elif recorded is None or (recorded.sha256 is None and recorded.stamp == current.stamp) or \
                    recorded.sha256 == current.sha256:
                record[image_id] = current.to_dict()
            else:
                changed.add(image_id)
        if changed:
            log.warning("studies changed on disk since they were embedded, reading them again: %s", sorted(changed))
        return changed, record

    def wait_refresh(self, timeout_s: float = 60.0) -> None:
        """Wait for a running background embedding (tests and tools; request handlers never wait)."""
        thread = self._refresh_thread
        if thread is not None:
            thread.join(timeout_s)

    def _refresh(self, new: list[Study], gone: frozenset[str], sweep: bool) -> None:
        """Sweep for changed studies (when ``sweep``), then embed new and changed studies into a snapshot of
        the map without holding any lock, and publish + swap the updated map (without the gone and changed
        studies' old points) as a new version under ``_map_lock`` if the published version is still the same."""
        t0 = time.monotonic()
        studies = list(new)
        try:
            snapshot = self.current()
            if snapshot is None:
                return
            changed, adopted = self._changed_studies(snapshot, sweep)
            self.changed = frozenset(changed)  # unavailable until read again (also if this update fails)
            if changed:
                by_id = self.studies.by_id()
                studies += [by_id[i] for i in sorted(changed) if i in by_id]
                self.embedding = frozenset(s.image_id for s in studies)
            drop = set(gone) | changed
            if not studies and not drop and not adopted:
                return
            placed = self._embed(studies, snapshot)
            if not self._publish(snapshot, drop, placed, adopted, len(studies)):
                return
            for image_id in {s.image_id for s in studies}:
                self.failed.pop(image_id, None)
            self.changed = frozenset(self.changed - changed)
            self._retry_s = RETRY_FIRST_S
            log.info("map updated in %.2f s: %d new slices of %d new or changed studies, %d studies removed",
                     time.monotonic() - t0, len(placed.ids), len(studies), len(drop))
        except Exception as err:  # a background thread must report, not die silently
            log.exception("updating the map failed; retrying in %.0f s", self._retry_s)
            for study in studies:
                self.failed[study.image_id] = f"embedding failed (retried automatically): {err}"
            self._retry_at = time.monotonic() + self._retry_s
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        finally:
            self.embedding = frozenset()

    def _changed_studies(self, snapshot: SliceMap, sweep: bool) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """``(changed ids, fingerprints to record)``: a sweep's answer, or the studies known changed."""
        if not sweep:
            return set(self.changed), {}
        t_sweep = time.monotonic()
        changed, adopted = self._sweep(snapshot)
        took = time.monotonic() - t_sweep
        self._next_sweep = max(self._next_sweep, time.monotonic() + took / SWEEP_MAX_LOAD)
        return changed, adopted

    def _embed(self, studies: list[Study], snapshot: SliceMap) -> _Placed:
        """Read ``studies`` and place their slices into ``snapshot`` (no lock held)."""
        placed = _Placed(w_dim=snapshot.w.shape[1])
        for study in studies:
            fingerprint = self.fingerprints.fingerprint(study.path)  # before reading: a later change shows
            if fingerprint is not None:
                placed.fingerprints[study.image_id] = fingerprint.to_dict()
            try:
                study_slices = read_study_slices(study.path, snapshot.read_config(self.slice_cfg), study.image_id)
            except StudyReadError as err:
                placed.errors[study.image_id] = str(err)
                continue
            placed.depths[study.image_id] = study_slices.n_slices
            if len(study_slices.images) == 0:
                continue
            w, xy = self.embedder.embed_and_place(study_slices.images, snapshot)
            placed.ids += [study.image_id] * len(w)
            placed.slices.append(study_slices.slices)
            placed.positions.append(study_slices.positions)
            placed.ws.append(w)
            placed.xys.append(xy)
        return placed

    def _publish(self, snapshot: SliceMap, drop: set[str], placed: _Placed, adopted: dict[str, dict[str, Any]],
                 n_studies: int) -> bool:
        """Publish ``snapshot`` without ``drop`` and with ``placed`` as a new version, and use it; False when the
        map changed meanwhile (the update is done again on a later request)."""
        with self._map_lock:
            current = self._load_map(self.workspace.map_stamp())
            if current is None or current.version != snapshot.version or \
                    current.model_version != snapshot.model_version:
                log.info("a new model was published while %d studies were embedded; they are embedded "
                         "into the new map next", n_studies)
                return False
            if len(current) != len(snapshot) or current.depths != snapshot.depths:
                log.info("the map changed meanwhile; this update is done again on the next request")
                return False
            new_map = current.without(frozenset(drop)).extended(
                *placed.arrays(), errors=placed.errors, depths=placed.depths,
                fingerprints={**adopted, **placed.fingerprints})
            assert current.version is not None
            try:  # a new version (the published one never changes), current only if its parent still is
                version = self.workspace.publish_update(new_map, current.version)
            except StaleVersionError:
                log.info("a new model was published while %d studies were embedded; they are embedded "
                         "into the new map next", n_studies)
                return False
            self._current = _Loaded(self.workspace.stamp_of(version), new_map)
        return True

    def removed_rows(self, slice_map: SliceMap) -> np.ndarray:
        """Rows of the map whose image has left the studies folder or changed on disk (never suggested),
        cached per map (model version, size and the stamp it was loaded with), studies and changed set."""
        by_id = self.studies.by_id()   # the same object while the studies are (no set of every id per request)
        loaded = self._current
        changed = self.changed
        stamp = loaded.stamp if loaded.slice_map is slice_map else None
        key = (slice_map.model_version, len(slice_map), stamp, id(by_id), changed)
        cached = self._gone
        if stamp is None or cached.key != key or cached.studies is not by_id:
            gone = (slice_map.image_set() - by_id.keys()) | (slice_map.image_set() & changed)
            rows = np.concatenate([slice_map.rows_of(i) for i in gone]) if gone else np.zeros(0, dtype=np.int64)
            cached = _RowsFor(key, rows, by_id)
            if stamp is not None:
                self._gone = cached
        return cached.rows
