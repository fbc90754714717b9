"""One datastore's model state on disk: slice cache, checkpoints, slice map, training status.

Layout of a workspace folder (by default ``<studies>/.ss_stylegan/``)::

    cache/            SliceCache of every study (memory-mapped uint8 slices)
    checkpoints/      training output (state_dict + JSON config checkpoints, metrics)
    published/        the checkpoint the slice map was made with (copied when training ends)
    projection/       saved TSNEProjector (reference W and 2-D map)
    slice_map.npz     every embedded slice: image id, slice index, world position, W, map position
    slice_map.json    model version, number of slices, errors per study (written after the npz)
    status.json       training state and progress (written atomically by the training process)
    STOP              present while a stop is requested; the training loop polls it

The slice map is what makes suggestions and classification cheap: they only read it. Every write is
atomic, so the server (reading) and the training subprocess (writing) never see half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

STATES = ("untrained", "training", "ready", "failed")


class WorkspaceError(RuntimeError):
    """The workspace on disk is missing a part or is unreadable; the message says which."""


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
    """

    image_ids: np.ndarray
    slices: np.ndarray
    positions: np.ndarray
    w: np.ndarray
    xy: np.ndarray
    model_version: str
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    depths: dict[str, int] = dataclasses.field(default_factory=dict)

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
        )


class PendingSuggestions:
    """Slices suggested to a client and not yet labelled, reserved for ``ttl_s`` seconds.

    Two annotators asking at the same time get different slices: a strategy excludes every slice
    reserved by another client. Thread-safe; in memory (a restart frees all reservations).
    """

    def __init__(self, ttl_s: float = 600.0) -> None:
        self.ttl_s = float(ttl_s)
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int], tuple[str, float]] = {}
        # held by a strategy while it chooses and reserves, so two requests cannot pick the same slice
        self.selection_lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, t) in self._by_key.items() if t <= now]:
            del self._by_key[key]

    def reserved(self, exclude_client: str | None = None) -> set[tuple[str, int]]:
        """Keys reserved by any client other than ``exclude_client``."""
        with self._lock:
            self._expire(time.monotonic())
            return {k for k, (c, _) in self._by_key.items() if c != exclude_client}

    def reserve(self, client: str, keys: list[tuple[str, int]]) -> None:
        """Reserve ``keys`` for ``client``, replacing that client's previous reservations."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            for key in [k for k, (c, _) in self._by_key.items() if c == client]:
                del self._by_key[key]
            for key in keys:
                self._by_key[key] = (client, now + self.ttl_s)

    def release(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._by_key.pop(key, None)



class Workspace:
    """Paths and atomic readers/writers of one datastore's model state.

    Args:
        root: the workspace folder (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

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
    def published_dir(self) -> Path:
        return self.root / "published"

    @property
    def projection_dir(self) -> Path:
        return self.root / "projection"

    @property
    def map_path(self) -> Path:
        return self.root / "slice_map.npz"

    @property
    def map_meta_path(self) -> Path:
        return self.root / "slice_map.json"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def stop_path(self) -> Path:
        return self.root / "STOP"

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

    def publish_checkpoint(self, checkpoint: Path) -> Path:
        """Copy a checkpoint and its integrity record into ``published/`` (atomically), replacing the old one."""
        checkpoint = Path(checkpoint)
        record = checkpoint.with_name(checkpoint.name + ".json")
        dest = self.published_dir / checkpoint.name
        atomic_write(dest, lambda fh: fh.write(checkpoint.read_bytes()))
        atomic_write(dest.with_name(dest.name + ".json"), lambda fh: fh.write(record.read_bytes()))
        for old in self.published_dir.iterdir():
            if old.name not in (dest.name, dest.name + ".json") and not old.name.startswith("."):
                old.unlink(missing_ok=True)
        return dest

    # -- stop flag ----------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        atomic_write_text(self.stop_path, str(time.time()))

    def clear_stop(self) -> None:
        self.stop_path.unlink(missing_ok=True)

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    # -- slice map --------------------------------------------------------------------------------------
    def has_map(self) -> bool:
        return self.map_meta_path.exists() and self.map_path.exists()

    def map_stamp(self) -> float | None:
        """Modification time of the map's metadata file (written last), or None when there is no map."""
        try:
            return self.map_meta_path.stat().st_mtime
        except FileNotFoundError:
            return None

    def save_map(self, slice_map: SliceMap) -> None:
        """Write the map atomically: arrays first, then the JSON that readers check for."""

        def write(fh: Any) -> None:
            buf = io.BytesIO()
            np.savez(
                buf,
                image_ids=slice_map.image_ids.astype(str),
                slices=slice_map.slices,
                positions=slice_map.positions,
                w=slice_map.w,
                xy=slice_map.xy,
            )
            fh.write(buf.getvalue())

        atomic_write(self.map_path, write)
        meta = {
            "model_version": slice_map.model_version,
            "n_slices": len(slice_map),
            "n_images": len(slice_map.image_set()),
            "errors": slice_map.errors,
            "depths": slice_map.depths,
            "written": time.time(),
        }
        atomic_write_text(self.map_meta_path, json.dumps(meta, indent=1))

    def load_map(self) -> SliceMap:
        """Read the map written by :meth:`save_map`.

        Raises:
            WorkspaceError: there is no map yet, or the files disagree / are unreadable.
        """
        if not self.has_map():
            raise WorkspaceError(f"no slice map in {self.root}: train the model first")
        try:
            meta = json.loads(self.map_meta_path.read_text(encoding="utf-8"))
            with np.load(self.map_path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ("image_ids", "slices", "positions", "w", "xy")}
        except (OSError, ValueError, KeyError) as err:
            raise WorkspaceError(f"unreadable slice map in {self.root}: {err}; retrain to rebuild it") from err
        slice_map = SliceMap(**arrays, model_version=str(meta["model_version"]), errors=dict(meta.get("errors", {})),
                             depths={k: int(v) for k, v in meta.get("depths", {}).items()})
        if len(slice_map) != int(meta["n_slices"]):
            raise WorkspaceError(
                f"slice map in {self.root} has {len(slice_map)} rows but its metadata says {meta['n_slices']}; "
                "retrain to rebuild it"
            )
        return slice_map
