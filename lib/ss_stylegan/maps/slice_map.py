"""The slice map: every embedded slice with its study, index, world position, W and map position.

:class:`SliceMap` is what a published version holds (``slice_map.npz`` + ``slice_map.json``);
:class:`MapVersion` names one version folder and its files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.config import SliceConfig

log = logging.getLogger(__name__)

MAP_ARRAYS = ("image_ids", "slices", "positions", "w", "xy")


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
