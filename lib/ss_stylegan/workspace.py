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

Version lifecycle: a training publishes a new model with :meth:`Workspace.publish` (new folder: checkpoint,
projector, map; then one pointer switch). The server publishes an *update* of the map (studies added,
dropped or read again; same model) with :meth:`Workspace.publish_update`: a new folder whose
``checkpoint/`` and ``projection/`` are hard links (copies where links fail) of its parent's files, plus
the new map, made current only if the parent is still current; otherwise it is removed and
:class:`StaleVersionError` raised. A folder is written only while it is being built (``save_map`` refuses a
folder that already has a map), so a published version never changes. Each activation keeps the new
current version and the one it replaced (a reader may still be on it) and removes every other folder that
no process is building (e.g. one a killed publish left half-written). When the pointer names a folder
without a complete map (damaged by hand), readers fall back to ``previous``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.config import SliceConfig
from ss_stylegan.atomic import atomic_write, atomic_write_text
from ss_stylegan.fps_index import FairLock
from ss_stylegan.training_lock import TrainingLock

log = logging.getLogger(__name__)

STATES = ("untrained", "training", "ready", "failed")
MAP_ARRAYS = ("image_ids", "slices", "positions", "w", "xy")


class WorkspaceError(RuntimeError):
    """The workspace on disk is missing a part or is unreadable; the message says which."""


class DamagedVersionError(WorkspaceError):
    """A published version's map cannot be read (truncated, garbled); ``version`` is the damaged one."""

    def __init__(self, message: str, version: MapVersion) -> None:
        super().__init__(message)
        self.version = version


class StaleVersionError(WorkspaceError):
    """A version derived from a parent could not be made current: another version became current meanwhile."""


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


@dataclasses.dataclass
class SliceMap:
    """Every embedded slice of the datastore and its place in the 2-D map.

    Attributes:
        image_ids: ``[N]`` datastore image id of each slice.
        slices: ``[N]`` int slice index along the canonical axial axis.
        positions: ``[N, 3]`` float world RAS position (mm) of each slice centre.
        w: ``[N, w_dim]`` float32 encoder means mu(x) in W.
        xy: ``[N, 2]`` float32 t-SNE map positions.
        model_version: identifier of the checkpoint that produced ``w``.
        errors: ``{image id: message}`` for studies that could not be read.
        depths: ``{image id: number of slices in the volume}`` (kept or skipped as empty).
        fingerprints: ``{image id: Fingerprint.to_dict()}`` of each study's file when it was read
            (:mod:`ss_stylegan.data.fingerprint`), so a study changed on disk later is detected.
        version: the version folder the map was read from or written to (None when new).
        training: how far the model of this map was trained when it was made (``step``, ``kimg``,
            ``minutes`` of training, ``final``: whether training had finished); empty when not recorded.
        slice_cfg: the :class:`~ss_stylegan.config.SliceConfig` (as a dict) the slices were read with, so
            studies placed into the map later are read the same way; empty when not recorded.
    """

    image_ids: np.ndarray
    slices: np.ndarray
    positions: np.ndarray
    w: np.ndarray
    xy: np.ndarray
    model_version: str
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    depths: dict[str, int] = dataclasses.field(default_factory=dict)
    fingerprints: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    version: MapVersion | None = None
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    slice_cfg: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        self.image_ids = np.asarray(self.image_ids, dtype=str)
        self.slices = np.asarray(self.slices, dtype=np.int64).reshape(n)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(n, 3)
        self.w = np.asarray(self.w, dtype=np.float32).reshape(n, -1)
        self.xy = np.asarray(self.xy, dtype=np.float32).reshape(n, 2)
        self._index: dict[str, np.ndarray] | None = None
        self._lookup: dict[tuple[str, int], int] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def read_config(self, default: SliceConfig) -> SliceConfig:
        """How slices placed into this map must be read: as its own slices were (``default`` for a map that
        does not record it)."""
        return SliceConfig.from_dict(self.slice_cfg) if self.slice_cfg else default

    def rows_of(self, image_id: str) -> np.ndarray:
        """Row indices (sorted by slice) of one image; empty when the image is not embedded."""
        if self._index is None:
            index: dict[str, list[int]] = {}
            for row, img in enumerate(self.image_ids.tolist()):
                index.setdefault(img, []).append(row)
            self._index = {
                k: np.asarray(sorted(v, key=lambda r: self.slices[r]), dtype=np.int64) for k, v in index.items()
            }
        return self._index.get(image_id, np.zeros(0, dtype=np.int64))

    def row_lookup(self) -> dict[tuple[str, int], int]:
        """``{(image_id, slice): row}`` (built once per map)."""
        if self._lookup is None:
            self._lookup = {
                (img, s): row for row, (img, s) in enumerate(zip(self.image_ids.tolist(), self.slices.tolist()))
            }
        return self._lookup

    def image_set(self) -> set[str]:
        if self._index is None:
            self.rows_of("")
        assert self._index is not None
        return set(self._index)

    def extended(
        self, image_ids: np.ndarray, slices: np.ndarray, positions: np.ndarray, w: np.ndarray, xy: np.ndarray,
        errors: dict[str, str] | None = None, depths: dict[str, int] | None = None,
        fingerprints: dict[str, dict[str, Any]] | None = None,
    ) -> SliceMap:
        """A new map with more slices appended (same model version)."""
        return SliceMap(
            image_ids=np.concatenate([self.image_ids, np.asarray(image_ids, dtype=str)]),
            slices=np.concatenate([self.slices, np.asarray(slices, dtype=np.int64)]),
            positions=np.concatenate([self.positions, np.asarray(positions, dtype=np.float64).reshape(-1, 3)]),
            w=np.concatenate([self.w, np.asarray(w, dtype=np.float32).reshape(-1, self.w.shape[1])]),
            xy=np.concatenate([self.xy, np.asarray(xy, dtype=np.float32).reshape(-1, 2)]),
            model_version=self.model_version,
            errors={**self.errors, **(errors or {})},
            depths={**self.depths, **(depths or {})},
            fingerprints={**self.fingerprints, **(fingerprints or {})},
            version=self.version,
            training=dict(self.training),
            slice_cfg=dict(self.slice_cfg),
        )

    def without(self, image_ids: set[str] | frozenset[str]) -> SliceMap:
        """A new map without the slices, errors, depths and fingerprints of ``image_ids`` (same model)."""
        keep = ~np.isin(self.image_ids, np.asarray(sorted(image_ids), dtype=str))
        return SliceMap(
            image_ids=self.image_ids[keep], slices=self.slices[keep], positions=self.positions[keep],
            w=self.w[keep], xy=self.xy[keep], model_version=self.model_version,
            errors={k: v for k, v in self.errors.items() if k not in image_ids},
            depths={k: v for k, v in self.depths.items() if k not in image_ids},
            fingerprints={k: v for k, v in self.fingerprints.items() if k not in image_ids},
            version=self.version,
            training=dict(self.training),
            slice_cfg=dict(self.slice_cfg),
        )


@dataclasses.dataclass(frozen=True)
class MapVersion:
    """The files of one published model version (see the module docstring for the layout)."""

    folder: Path
    checkpoint_dir: Path
    projection_dir: Path

    @classmethod
    def in_folder(cls, folder: Path) -> MapVersion:
        return cls(folder=folder, checkpoint_dir=folder / "checkpoint", projection_dir=folder / "projection")

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def map_path(self) -> Path:
        """The arrays file the map's metadata names (``slice_map.npz`` when it has none yet)."""
        return self.folder / _arrays_name(self.map_meta_path)

    @property
    def map_meta_path(self) -> Path:
        return self.folder / "slice_map.json"

    def is_complete(self) -> bool:
        """True when the map's metadata (written last) and the arrays it names exist."""
        return self.map_meta_path.is_file() and self.map_path.is_file()


_ARRAYS_NAMES: dict[str, tuple[tuple[int, int, int], str]] = {}  # metadata path -> (stat key, arrays name)


def _arrays_name(meta_path: Path) -> str:
    """The arrays file named by a map's metadata, read again only when the metadata file changes (readers
    check it at every request, and the metadata of a large datastore is not small)."""
    try:
        st = meta_path.stat()
    except OSError:
        return "slice_map.npz"
    key = (st.st_ino, st.st_mtime_ns, st.st_size)  # an atomic rewrite is a new inode
    cached = _ARRAYS_NAMES.get(str(meta_path))
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        name = json.loads(meta_path.read_text(encoding="utf-8")).get("arrays")
    except (OSError, ValueError, AttributeError):
        name = None
    if not (isinstance(name, str) and name.startswith("slice_map") and "/" not in name):
        name = "slice_map.npz"
    if len(_ARRAYS_NAMES) > 256:  # one entry per version folder ever read; only the last few are in use
        _ARRAYS_NAMES.clear()
    _ARRAYS_NAMES[str(meta_path)] = (key, name)
    return name


class ReservationLimitError(ValueError):
    """A client asked for more suggestions than it may hold reserved at once (HTTP 429)."""


class PendingSuggestions:
    """Slices suggested to a client and not yet labelled, reserved for ``ttl_s`` seconds.

    Two annotators asking at the same time get different slices: a strategy excludes every slice
    reserved by another client. Each *owner* (the signed-in user, or the client id when the server has
    no login) may hold at most ``cap`` reservations over all its clients, so one client cannot reserve
    every slice and leave everyone else with nothing. Thread-safe; in memory (a restart frees all
    reservations).
    """

    def __init__(self, ttl_s: float = 600.0, cap: int = 32) -> None:
        self.ttl_s = float(ttl_s)
        self.cap = int(cap)
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int], tuple[str, str, float]] = {}  # key -> (client, owner, expiry)
        # held by a strategy while it chooses and reserves, so two requests cannot pick the same slice;
        # first come, first served, so no annotator waits more turns than there are requests ahead
        self.selection_lock = FairLock()

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, _, t) in self._by_key.items() if t <= now]:
            del self._by_key[key]

    def reserved(self, exclude_client: str | None = None) -> set[tuple[str, int]]:
        """Keys reserved by any client other than ``exclude_client``."""
        with self._lock:
            self._expire(time.monotonic())
            return {k for k, (c, _, _) in self._by_key.items() if c != exclude_client}

    def room(self, client: str, owner: str | None = None) -> int:
        """How many suggestions ``client`` may be given now: the cap, less what the same owner holds
        under its other clients (a new request replaces the client's own reservations)."""
        owner = owner or client
        with self._lock:
            self._expire(time.monotonic())
            held = sum(1 for c, o, _ in self._by_key.values() if o == owner and c != client)
        return max(0, self.cap - held)

    def check_count(self, count: int, client: str, owner: str | None = None) -> None:
        """Raise :class:`ReservationLimitError` when ``count`` suggestions would exceed the owner's cap."""
        room = self.room(client, owner)
        if count > room:
            held = self.cap - room
            raise ReservationLimitError(
                f"count {count} is more than this client may hold reserved: at most {self.cap} suggestions "
                f"per user at once (setting suggestion_cap)"
                + (f", and {held} are reserved under its other client ids" if held else "")
                + "; label the slices already suggested or ask for fewer")

    def reserve(self, client: str, keys: list[tuple[str, int]], owner: str | None = None) -> None:
        """Reserve ``keys`` for ``client``, replacing that client's previous reservations."""
        owner = owner or client
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            for key in [k for k, (c, _, _) in self._by_key.items() if c == client]:
                del self._by_key[key]
            for key in keys:
                self._by_key[key] = (client, owner, now + self.ttl_s)

    def release(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._by_key.pop(key, None)

    def release_client(self, client: str, owner: str | None = None) -> list[tuple[str, int]]:
        """Give back every reservation of ``client`` held by ``owner`` (default: the client itself), as a
        client does when its user stops labelling; returns the keys given back. Reservations of the same
        client id under another owner (another signed-in user) are left alone."""
        owner = owner or client
        with self._lock:
            self._expire(time.monotonic())
            keys = [k for k, (c, o, _) in self._by_key.items() if c == client and o == owner]
            for key in keys:
                del self._by_key[key]
        return sorted(keys)


class Workspace:
    """Paths and atomic readers/writers of one datastore's model state.

    Args:
        root: the workspace folder (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._warned: dict[str, Any] | None = None  # the pointer last reported as naming an incomplete map
        self._activated: set[Path] = set()  # folders of new_version() blocks made current by activate()
        # (pointer file's stat key, current version, its arrays file): map_stamp() without re-reading the pointer
        self._pointed: tuple[tuple[int, ...], MapVersion, Path] | None = None
        self.problems: list[str] = []  # damage found and repaired (see repair), for /info/
        self._publish_rlock = threading.RLock()
        self._publish_depth = 0

    # -- paths --------------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_dir_for(self, model_config: dict[str, Any]) -> Path:
        """Checkpoint folder of one model configuration, so changing ``--conf`` settings starts a new run
        (and changing them back resumes the old one) instead of failing on a mismatched checkpoint."""
        digest = hashlib.sha1(json.dumps(model_config, sort_keys=True).encode()).hexdigest()[:10]
        return self.checkpoint_dir / f"model-{digest}"

    @property
    def maps_dir(self) -> Path:
        return self.root / "maps"

    @property
    def pointer_path(self) -> Path:
        return self.root / "current.json"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def stop_path(self) -> Path:
        return self.root / "STOP"

    def training_lock(self) -> TrainingLock:
        """The lock a training process holds while it runs (``train.lock``: one training per workspace)."""
        return TrainingLock(self.root / "train.lock")

    # -- training status ------------------------------------------------------------------------------
    def read_status(self) -> TrainingStatus:
        """The last status written, or an ``untrained`` status when none (or an unreadable one) exists."""
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

    # -- published versions -----------------------------------------------------------------------------
    @contextmanager
    def publish_lock(self) -> Iterator[None]:
        """Hold ``publish.lock`` (``flock``, across processes and threads) for the duration of the block;
        re-entrant in one thread (an activation may repair a damaged pointer)."""
        with self._publish_rlock:
            if self._publish_depth:
                self._publish_depth += 1
                try:
                    yield
                finally:
                    self._publish_depth -= 1
                return
            fd = os.open(self.root / "publish.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._publish_depth = 1
                yield
            finally:
                self._publish_depth = 0
                os.close(fd)  # releases the lock

    @contextmanager
    def new_version(self, model_version: str) -> Iterator[MapVersion]:
        """A new, empty, not yet current version folder for ``model_version``, to be written and then made
        current with :meth:`activate` inside the block.

        While the block runs the folder is locked (``flock`` on the folder), so an activation by another
        process or thread does not prune it. At the end of the block a folder that was not made current is
        removed (a process killed meanwhile leaves it to the next activation's pruning).
        """
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_version)[:80] or "model"
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}-{safe}"
        with self.publish_lock():  # no pruning between creating the folder and locking it
            folder = self.maps_dir.resolve() / name
            folder.mkdir(parents=True)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield MapVersion.in_folder(folder)
        finally:
            if folder not in self._activated:
                shutil.rmtree(folder, ignore_errors=True)
            self._activated.discard(folder)
            os.close(fd)

    def publish_checkpoint(self, checkpoint: Path, version: MapVersion) -> Path:
        """Copy a checkpoint and its integrity record into ``version`` (atomically)."""
        checkpoint = Path(checkpoint)
        record = checkpoint.with_name(checkpoint.name + ".json")
        dest = version.checkpoint_dir / checkpoint.name
        atomic_write(dest, lambda fh: fh.write(checkpoint.read_bytes()))
        atomic_write(dest.with_name(dest.name + ".json"), lambda fh: fh.write(record.read_bytes()))
        return dest

    def _read_pointer(self) -> dict[str, Any] | None:
        pointer, _ = self._pointer_or_problem()
        return pointer

    def _pointer_or_problem(self) -> tuple[dict[str, Any] | None, str | None]:
        """``(pointer, None)``; ``(None, None)`` when there is no pointer; ``(None, why)`` when it is damaged."""
        try:
            data = json.loads(self.pointer_path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as err:
            return None, f"{self.pointer_path.name} is unreadable ({err})"
        if not isinstance(data, dict) or not isinstance(data.get("current"), str):
            return None, f"{self.pointer_path.name} names no version ({str(data)[:80]!r})"
        return data, None

    def _version_at(self, relative: Any) -> MapVersion | None:
        if not isinstance(relative, str) or not relative:
            return None
        folder = (self.root / relative).resolve()
        if folder.parent != self.maps_dir.resolve():
            log.error("%s names %r, which is not a folder of %s; ignoring it", self.pointer_path, relative,
                      self.maps_dir)
            return None
        return MapVersion.in_folder(folder)

    def current_version(self) -> MapVersion | None:
        """The version readers should use: the pointer's current one, else its previous one when the
        current folder has no complete map; None before any. A damaged pointer, or a missing one while
        complete versions exist, is rebuilt from the versions on disk (:meth:`repair`)."""
        pointer, problem = self._pointer_or_problem()
        if pointer is None:
            if problem is None and all(_being_built(v.folder) for v in self.complete_versions()):
                return None  # before the first publish (or during it)
            return self.repair(problem or f"{self.pointer_path.name} is missing")
        for key in ("current", "previous"):
            version = self._version_at(pointer.get(key))
            if version is not None and version.is_complete():
                if key == "previous" and self._warned != pointer:
                    self._warned = pointer
                    log.error("%s names %s, which has no complete slice map; using the previous version %s",
                              self.pointer_path, pointer.get("current"), version.name)
                return version
        return None

    def activate(self, version: MapVersion, parent: MapVersion | None = None) -> None:
        """Make ``version`` current with one atomic rename of ``current.json``, keep the version it
        replaces as ``previous`` (a reader may still be using it) and remove every other version folder
        that no process is building (e.g. one a killed publish left half-written).

        With ``parent``, ``version`` is made current only if ``parent`` is still the current version. The
        check and the switch happen under ``publish.lock``, so they are atomic across processes.

        Raises:
            WorkspaceError: ``version`` has no complete slice map.
            StaleVersionError: ``parent`` is given and another version is current now.
        """
        if not version.is_complete():
            raise WorkspaceError(f"{version.folder} has no complete slice map; it cannot be made current")
        with self.publish_lock():
            old = self.current_version()
            if parent is not None and (old is None or old.folder.resolve() != parent.folder.resolve()):
                raise StaleVersionError(
                    f"{version.name} updates {parent.name}, but {old.name if old else 'no version'} is current now")
            previous = old.folder if old is not None and old.folder.resolve() != version.folder.resolve() \
                else None
            pointer = self._write_pointer(version, previous)
            self._activated.add(version.folder.resolve())
            keep = {version.folder.resolve()} | ({previous.resolve()} if previous is not None else set())
            for folder in sorted(self.maps_dir.iterdir()) if self.maps_dir.is_dir() else ():
                if folder.is_dir() and folder.resolve() not in keep:
                    _remove_unless_building(folder)
        log.info("published %s (model %s)", version.name, pointer["model_version"])

    def publish(self, slice_map: SliceMap, checkpoint: Path, projector: Any) -> MapVersion:
        """Publish one complete model version and make it current: the checkpoint the map was made with,
        the fitted projector (anything with ``save(folder)``, e.g. :class:`~ss_stylegan.projection.TSNEProjector`)
        and the slice map are written into a new version folder, then one atomic pointer switch makes it
        current. A process killed before the switch leaves the previous version current and complete.
        """
        with self.new_version(slice_map.model_version) as version:
            self.publish_checkpoint(checkpoint, version)
            projector.save(version.projection_dir)
            self.save_map(slice_map, version)
            self.activate(version)
        return version

    def publish_update(self, slice_map: SliceMap, parent: MapVersion) -> MapVersion:
        """Publish ``slice_map``, an update of ``parent``'s map made with the same model (studies added with
        the parent's projector, dropped or read again), as a new version and make it current if ``parent``
        still is. The new folder's ``checkpoint/`` and ``projection/`` are hard links of the parent's files
        (copies where a link cannot be made): every file there is written once and never rewritten.

        Raises:
            StaleVersionError: another version became current since ``parent`` (e.g. a training published);
                the new folder has been removed and nothing changed.
        """
        with self.new_version(slice_map.model_version) as version:
            try:
                for name in ("checkpoint", "projection"):
                    _link_tree(parent.folder / name, version.folder / name)
            except FileNotFoundError as err:  # pruned meanwhile: two other versions were published since
                raise StaleVersionError(f"{parent.name} was removed while {version.name} was made from it") from err
            self.save_map(slice_map, version)
            self.activate(version, parent=parent)
        return version

    # -- damage ------------------------------------------------------------------------------------------
    def complete_versions(self) -> list[MapVersion]:
        """Every version folder with a complete map, newest first."""
        if not self.maps_dir.is_dir():
            return []
        found = [MapVersion.in_folder(f.resolve()) for f in self.maps_dir.iterdir() if f.is_dir()]
        return sorted((v for v in found if v.is_complete()), key=lambda v: v.name, reverse=True)

    @staticmethod
    def unreadable(version: MapVersion) -> str | None:
        """Why ``version``'s map cannot be read (None when its metadata and its arrays' directory read); cheap:
        the arrays themselves are not read."""
        try:
            meta = json.loads(version.map_meta_path.read_bytes().decode("utf-8"))
            int(meta["n_slices"])
            str(meta["model_version"])
        except Exception as err:  # noqa: BLE001 -- any damage of the file's bytes
            return f"{version.map_meta_path.name} is unreadable ({type(err).__name__}: {err})"
        try:
            with zipfile.ZipFile(version.map_path) as archive:
                names = set(archive.namelist())
        except Exception as err:  # noqa: BLE001
            return f"{version.map_path.name} is unreadable ({type(err).__name__}: {err})"
        missing = {f"{k}.npy" for k in MAP_ARRAYS} - names
        return f"{version.map_path.name} lacks {sorted(missing)}" if missing else None

    def repair(self, why: str, damaged: MapVersion | None = None) -> MapVersion | None:
        """Make the newest readable version current, after the pointer was found damaged or missing or the
        version it names (``damaged``) unreadable; return it (None when no version is readable).

        ``damaged`` is moved to ``damaged/<name>`` (kept for inspection, never served). What was done is added
        to :attr:`problems`, for ``/info/``. Runs under ``publish.lock``: when another process repaired or
        published meanwhile, its pointer is kept.
        """
        with self.publish_lock():
            pointer, problem = self._pointer_or_problem()
            named = self._version_at(pointer.get("current")) if pointer is not None else None
            if pointer is not None and (damaged is None or (
                    named is not None and named.folder != damaged.folder and named.is_complete())):
                return self._pointed_version(pointer)  # repaired or published by someone else meanwhile
            if damaged is not None and damaged.folder.exists():
                dest = self.root / "damaged" / damaged.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(damaged.folder, dest)
                why += f"; moved {damaged.name} to damaged/{damaged.name}"
            for version in self.complete_versions():
                reason = self.unreadable(version) if not _being_built(version.folder) else "being built"
                if reason is None:
                    self._write_pointer(version, None, rebuilt=why)
                    self.problems.append(f"{why}; serving {version.name} instead")
                    log.error("%s; made %s current", why, version.name)
                    return version
                if reason != "being built":
                    why += f"; skipped {version.name}: {reason}"
            self.problems.append(f"{why}; no readable map version is left: retrain (POST /train/ss_stylegan)")
            log.error("%s; no readable map version is left", why)
            if problem is not None or damaged is not None:
                self.pointer_path.unlink(missing_ok=True)
            return None

    def _pointed_version(self, pointer: dict[str, Any]) -> MapVersion | None:
        for key in ("current", "previous"):
            version = self._version_at(pointer.get(key))
            if version is not None and version.is_complete():
                return version
        return None

    def _write_pointer(self, version: MapVersion, previous: Path | None, **extra: Any) -> dict[str, Any]:
        pointer = {
            "current": os.path.relpath(version.folder, self.root),
            "previous": os.path.relpath(previous, self.root) if previous is not None else None,
            "model_version": json.loads(version.map_meta_path.read_text(encoding="utf-8"))["model_version"],
            "published": time.time(),
            **extra,
        }
        atomic_write_text(self.pointer_path, json.dumps(pointer, indent=1))
        return pointer

    # -- stop flag ----------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        atomic_write_text(self.stop_path, str(time.time()))

    def clear_stop(self) -> None:
        self.stop_path.unlink(missing_ok=True)

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    # -- slice map --------------------------------------------------------------------------------------
    def has_map(self) -> bool:
        return self.current_version() is not None

    def map_stamp(self) -> tuple[str, int] | None:
        """``(current version folder, modification time of its map metadata)``; None when there is no map.

        Changes whenever a publish or an update switches the pointer. A server asks at every request, so
        while the pointer file is the one last read (same inode, size and times: every switch is an atomic
        rename of a new file) and names its ``current`` version, this costs three ``stat`` calls (the
        pointer, the map's metadata and arrays) instead of reading and parsing the pointer and resolving
        the folder (about 25 system calls; each lets a busy thread take the interpreter for up to 5 ms).
        Anything else (no map, a damaged current version, the previous one in use) takes the full path.
        """
        try:
            st = os.stat(self.pointer_path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            key = None
        pointed = self._pointed
        if key is not None and pointed is not None and pointed[0] == key:
            version, arrays = pointed[1], pointed[2]
            try:
                stamp = str(version.folder), version.map_meta_path.stat().st_mtime_ns
                if arrays.is_file():
                    return stamp
            except OSError:
                pass
        self._pointed = None
        version = self.current_version()
        if version is None:
            return None
        if key is not None and self._names_current(version):
            self._pointed = (key, version, version.map_path)
        return self.stamp_of(version)

    def _names_current(self, version: MapVersion) -> bool:
        """Whether the pointer's ``current`` entry names ``version`` (not its ``previous`` one, used when
        the current folder is damaged: that case is checked again at every call)."""
        pointer = self._read_pointer()
        current = self._version_at(pointer.get("current")) if pointer is not None else None
        return current is not None and current.folder == version.folder

    @staticmethod
    def stamp_of(version: MapVersion) -> tuple[str, int] | None:
        """The :meth:`map_stamp` ``version`` has when it is current (None when its map is missing)."""
        try:
            return str(version.folder), version.map_meta_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def save_map(self, slice_map: SliceMap, version: MapVersion) -> MapVersion:
        """Write the map into ``version``, a folder being built (see :meth:`new_version`): the arrays file,
        then the JSON that names it (so a folder with the JSON is complete). Sets ``slice_map.version``.

        Raises:
            WorkspaceError: ``version`` already holds a map (published versions never change: write an
                update into a new version, :meth:`publish_update`).
        """
        if version.map_meta_path.exists():
            raise WorkspaceError(f"{version.folder} already holds a slice map; published versions never change")

        def write(fh: Any) -> None:
            # straight into the file, 16 MiB at a time: through a BytesIO the whole archive was held in memory
            # (2 GB more for a million slices of w_dim 512), a memory-mapped w (a large map's, see
            # ss_stylegan.pipeline) included; measured for a 100 MiB w: 143 MiB allocated before, 38 MiB now
            np.savez(
                fh,
                image_ids=slice_map.image_ids.astype(str),
                slices=slice_map.slices,
                positions=slice_map.positions,
                w=slice_map.w,
                xy=slice_map.xy,
            )

        arrays = atomic_write(version.folder / "slice_map.npz", write)
        meta = {
            "arrays": arrays.name,
            "model_version": slice_map.model_version,
            "n_slices": len(slice_map),
            "n_images": len(slice_map.image_set()),
            "errors": slice_map.errors,
            "depths": slice_map.depths,
            "fingerprints": slice_map.fingerprints,
            "training": slice_map.training,
            "slice_cfg": slice_map.slice_cfg,
            "written": time.time(),
        }
        atomic_write_text(version.map_meta_path, json.dumps(meta, indent=1))
        slice_map.version = version
        return version

    def load_map(self, version: MapVersion | None = None) -> SliceMap:
        """Read the map written by :meth:`save_map` (of the current version unless ``version`` is given).

        Raises:
            WorkspaceError: there is no map yet, or the files disagree / are unreadable.
        """
        version = version or self.current_version()
        if version is None or not version.is_complete():
            raise WorkspaceError(f"no slice map in {self.root}: train the model first")
        try:
            meta = json.loads(version.map_meta_path.read_bytes().decode("utf-8"))
            with np.load(version.map_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in MAP_ARRAYS}
            slice_map = SliceMap(**arrays, model_version=str(meta["model_version"]),
                                 errors=dict(meta.get("errors", {})),
                                 depths={k: int(v) for k, v in meta.get("depths", {}).items()},
                                 fingerprints=dict(meta.get("fingerprints", {})), version=version,
                                 training=dict(meta.get("training") or {}),
                                 slice_cfg=dict(meta.get("slice_cfg") or {}))
        except Exception as err:  # noqa: BLE001 -- any damage of the files' bytes (BadZipFile, EOFError, zlib ...)
            raise DamagedVersionError(
                f"{version.name}/{version.map_path.name} cannot be read ({type(err).__name__}: {err})", version) from err
        if len(slice_map) != int(meta["n_slices"]):
            raise DamagedVersionError(
                f"slice map in {version.folder.name} has {len(slice_map)} rows but its metadata says "
                f"{meta['n_slices']}", version)
        return slice_map


def _link_tree(source: Path, dest: Path) -> None:
    """Hard-link every file under ``source`` into ``dest`` (copy where a link cannot be made); nothing when
    ``source`` is missing. The files are never rewritten in place, so a link shares them safely."""
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _being_built(folder: Path) -> bool:
    """Whether a process holds the folder's lock (it is being built in a ``new_version`` block)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _remove_unless_building(folder: Path) -> None:
    """Remove a version folder unless a process holds its lock (it is being built in a ``new_version`` block)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: being built (or the lock cannot be taken: leave the folder alone)
        os.close(fd)
        return
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)
