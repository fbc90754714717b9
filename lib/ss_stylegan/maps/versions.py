"""Published map versions: immutable folders under ``maps/`` and the ``current.json`` pointer.

A training publishes a new model with :meth:`MapVersions.publish` (new folder: checkpoint, projector,
map; then one pointer switch). The server publishes an *update* of the map (studies added, dropped or read
again; same model) with :meth:`MapVersions.publish_update`: a new folder whose ``checkpoint/`` and
``projection/`` are hard links (copies where links fail) of its parent's files, plus the new map, made
current only if the parent is still current; otherwise it is removed and :class:`StaleVersionError` raised.
A folder is written only while it is being built (``save_map`` refuses a folder that already has a map),
so a published version never changes. Each activation keeps the new current version and the one it
replaced (a reader may still be on it) and removes every other folder that no process is building (e.g.
one a killed publish left half-written). When the pointer names a folder without a complete map, readers
fall back to ``previous``; a version that cannot be read is moved to ``damaged/`` (:meth:`MapVersions.repair`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.maps.slice_map import MAP_ARRAYS, MapVersion, SliceMap
from ss_stylegan.storage.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

class WorkspaceError(RuntimeError):
    """The workspace on disk is missing a part or is unreadable; the message says which."""


class DamagedVersionError(WorkspaceError):
    """A published version's map cannot be read (truncated, garbled); ``version`` is the damaged one."""

    def __init__(self, message: str, version: MapVersion) -> None:
        super().__init__(message)
        self.version = version


class StaleVersionError(WorkspaceError):
    """A version derived from a parent could not be made current: another version became current meanwhile."""



@dataclasses.dataclass(frozen=True)
class _PointedVersion:
    """The version the pointer file named when it was last read, and that file's stat key."""

    pointer_key: tuple[int, ...]
    version: MapVersion
    arrays: Path


PICTURES = "pictures"   # a version's folder of the training's pictures (samples, reconstructions)


class MapVersions:
    """The published map versions of one workspace folder: immutable ``maps/<name>/`` folders, the
    ``current.json`` pointer switched atomically under ``publish.lock``, repair of damaged versions.

    Args:
        root: the workspace folder (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._warned: dict[str, Any] | None = None  # the pointer last reported as naming an incomplete map
        self._activated: set[Path] = set()  # folders of new_version() blocks made current by activate()
        self._pointed: _PointedVersion | None = None  # map_stamp() without re-reading the pointer
        self.problems: list[str] = []  # damage found and repaired (see repair), for /info/
        self._publish_rlock = threading.RLock()
        self._publish_depth = 0
        self.maps_dir = self.root / "maps"
        self.pointer_path = self.root / "current.json"

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

    def publish(self, slice_map: SliceMap, checkpoint: Path, projector: Any,
                pictures: Sequence[Path] = ()) -> MapVersion:
        """Publish one complete model version and make it current: the checkpoint the map was made with,
        the fitted projector (anything with ``save(folder)``, e.g. :class:`~ss_stylegan.maps.projection.TSNEProjector`),
        the training's ``pictures`` (PNG files, into ``pictures/``) and the slice map are written into a new version
        folder, then one atomic pointer switch makes it current. A process killed before the switch leaves the
        previous version current and complete.
        """
        with self.new_version(slice_map.model_version) as version:
            self.publish_checkpoint(checkpoint, version)
            for picture in pictures:
                atomic_write(version.folder / PICTURES / picture.name, lambda fh, p=picture: fh.write(p.read_bytes()))
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
                for name in ("checkpoint", "projection", PICTURES):
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

    # -- slice map --------------------------------------------------------------------------------------
    def has_map(self) -> bool:
        return self.current_version() is not None

    def map_stamp(self) -> tuple[str, int] | None:
        """``(current version folder, modification time of its map metadata)``; None when there is no map.

        Changes whenever a publish or an update switches the pointer. A server asks at every request, so
        while the pointer file is the one last read (same inode, size and times: every switch is an atomic
        rename of a new file) and names its ``current`` version, this costs three ``stat`` calls (the
        pointer, the map's metadata and arrays) instead of reading and parsing the pointer and resolving
        the folder (about 25 system calls, each a chance for a busy thread to take the interpreter).
        Anything else (no map, a damaged current version, the previous one in use) takes the full path.
        """
        try:
            st = os.stat(self.pointer_path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            key = None
        pointed = self._pointed
        if key is not None and pointed is not None and pointed.pointer_key == key:
            version, arrays = pointed.version, pointed.arrays
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
            self._pointed = _PointedVersion(key, version, version.map_path)
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
            # straight into the file, a chunk at a time: through a BytesIO the whole archive, a memory-mapped w
            # (a large map's, see ss_stylegan.maps.build) included, would be held in memory
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
