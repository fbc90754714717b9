"""``SliceCache``: every model-ready slice of a folder of studies, memory-mapped and kept up to date.

Layout of ``cache_dir``::

    studies/<key>.npy     uint8 [n, R, R]  one study's kept slices (memory-mapped when reused)
    studies/<key>.json    its slice indices, positions, slice count, source path
    slices-<ckey>.npy     uint8 [N, R, R]  every study's slices, concatenated in study order
    index-<ckey>.npz      image_ids, slice_indices, positions, study summaries, errors
    current.json          which <ckey> is the latest build (read by :meth:`SliceCache.open`)

``<key>`` hashes the study's path, size and ``mtime_ns`` (all files of a DICOM folder) and the
:class:`~ss_stylegan.config.SliceConfig`, so a changed file or setting is re-read while every other
study is reused; ``<ckey>`` hashes the list of study keys. Every file is written atomically, and
the per-study JSON is written last, so an interrupted build never leaves a half entry in use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.fingerprint import study_files
from ss_stylegan.data.preprocess import preprocess_volume
from ss_stylegan.data.readers import (
    StudyReadError,
    image_id_of,
    is_volume_file,
    looks_like_dicom_file,
    read_volume,
)
from ss_stylegan.storage.atomic import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped whenever the preprocessing changes what a cached slice holds."""

IGNORED_NAMES = frozenset({"labels", "datastore_v2.json", "datastore.json"})
"""Entries of a datastore folder that MONAI Label writes and that are never studies."""


class SliceCacheError(Exception):
    """The cache folder is missing, unreadable or has no finished build; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Study:
    """One study of a datastore: a volume file, a picture or a DICOM series folder."""

    image_id: str
    path: Path


@dataclasses.dataclass(frozen=True)
class SkippedStudy:
    """A study that could not be used, and why."""

    image_id: str
    path: Path
    message: str


@dataclasses.dataclass
class StudySummary:
    """What one study contributed: ``n_slices`` in the volume, ``kept`` slice indices (``int64``)."""

    image_id: str
    path: Path
    n_slices: int
    kept: np.ndarray


@dataclasses.dataclass
class StudySlices:
    """The kept slices of one study read outside any datastore (e.g. an uploaded file).

    Attributes:
        image_id: file name without its suffix.
        images: ``uint8 [n, R, R]``.
        slices: ``int64 [n]`` index along the canonical axial axis.
        positions: ``float64 [n, 3]`` world RAS (mm) of each slice centre.
        n_slices: slices in the volume, kept or not.
    """

    image_id: str
    images: np.ndarray
    slices: np.ndarray
    positions: np.ndarray
    n_slices: int


def find_studies(folder: str | Path) -> list[Study]:
    """List the studies directly inside ``folder``, sorted by image id.

    A study is a file with an image suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``,
    ``.mhd``, ``.png``, ``.jpg``, ``.jpeg``) or a sub-folder with DICOM files directly inside it
    (one series; nested patient/study folders are not searched). Hidden entries
    (``.ss_stylegan``), MONAI Label's ``labels/`` folder and ``datastore_v2.json`` and every
    other file are ignored. When two files share an image id, the first by name is used.

    Raises:
        NotADirectoryError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"studies folder '{folder}' does not exist or is not a folder")
    found: dict[str, Study] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.name in IGNORED_NAMES:
            continue
        if entry.is_dir():
            if not _is_dicom_folder(entry):
                continue
        elif not is_volume_file(entry):
            continue
        image_id = image_id_of(entry)
        if image_id in found:
            logger.warning("%s has the same image id %r as %s; ignoring it", entry, image_id, found[image_id].path)
            continue
        found[image_id] = Study(image_id=image_id, path=entry)
    return [found[key] for key in sorted(found)]


def read_study_slices(path: str | Path, slice_cfg: SliceConfig, image_id: str | None = None) -> StudySlices:
    """Read and preprocess one study that is not in a cache (no files are written).

    Args:
        path: a study file or DICOM series folder.
        slice_cfg: slice settings (must match the model's).
        image_id: id to report; defaults to the file name without its suffix.

    Raises:
        StudyReadError: the file cannot be read (the message names it).
    """
    volume = read_volume(path)
    pre = preprocess_volume(volume, slice_cfg)
    return StudySlices(
        image_id=image_id if image_id is not None else image_id_of(path),
        images=pre.images,
        slices=pre.slices,
        positions=pre.positions,
        n_slices=pre.n_slices,
    )


class SliceCache:
    """Every kept slice of a set of studies, as one memory-mapped ``uint8 [N, R, R]`` array.

    Attributes:
        images: ``np.memmap uint8 [N, R, R]`` (read-only).
        image_ids: ``str [N]``, the study of each slice.
        slices: ``int64 [N]``, the slice index inside its study (canonical axial axis).
        positions: ``float64 [N, 3]``, world RAS (mm) of each slice centre.
        studies: per-study summaries, in study order (failed studies are absent).
        errors: studies that could not be read.
        slice_cfg: the settings the slices were made with.
        cache_dir: where the cache lives.
        n_read: studies read from their source files by the build that made this object.
        n_reused: studies taken from the per-study cache by that build.
    """

    def __init__(
        self,
        images: np.ndarray,
        image_ids: np.ndarray,
        slices: np.ndarray,
        positions: np.ndarray,
        studies: list[StudySummary],
        errors: list[SkippedStudy],
        slice_cfg: SliceConfig,
        cache_dir: Path,
        n_read: int = 0,
        n_reused: int = 0,
    ) -> None:
        self.images = images
        self.image_ids = image_ids
        self.slices = slices
        self.positions = positions
        self.studies = studies
        self.errors = errors
        self.slice_cfg = slice_cfg
        self.cache_dir = cache_dir
        self.n_read = n_read
        self.n_reused = n_reused
        self._lookup: dict[tuple[str, int], int] | None = None
        self._by_image: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return int(len(self.image_ids))

    def refs(self) -> list[tuple[str, int]]:
        """``(image_id, slice_index)`` of every slice, in cache order."""
        return [(str(i), int(s)) for i, s in zip(self.image_ids, self.slices)]

    def index_of(self, image_id: str, slice_index: int) -> int:
        """Row of ``(image_id, slice_index)`` in :attr:`images`.

        Raises:
            KeyError: the slice is not in the cache (unknown image, skipped or out-of-range slice).
        """
        if self._lookup is None:
            self._lookup = {ref: row for row, ref in enumerate(self.refs())}
        try:
            return self._lookup[(str(image_id), int(slice_index))]
        except KeyError:
            raise KeyError(
                f"slice {slice_index} of image {image_id!r} is not in the slice cache "
                "(unknown image, or a slice that was skipped as empty)"
            ) from None

    def slices_of(self, image_id: str) -> np.ndarray:
        """Rows (``int64``) of every cached slice of ``image_id``, in slice order; empty when unknown."""
        if self._by_image is None:
            order = np.argsort(self.image_ids, kind="stable")
            ids = self.image_ids[order]
            uniq, starts = np.unique(ids, return_index=True)
            ends = [*starts[1:], len(ids)]
            self._by_image = {str(u): order[a:b].astype(np.int64) for u, a, b in zip(uniq, starts, ends)}
        return self._by_image.get(str(image_id), np.empty(0, dtype=np.int64))

    # ------------------------------------------------------------------ build / open
    @classmethod
    def build(cls, studies: Sequence[Study], slice_cfg: SliceConfig, cache_dir: str | Path) -> SliceCache:
        """Preprocess every study (reusing unchanged ones) and write the combined memory map.

        Args:
            studies: from :func:`find_studies` (any order; the cache keeps this order).
            slice_cfg: slice settings.
            cache_dir: folder for the cache (created).

        Returns:
            The cache. Studies that fail to read are listed in ``errors`` and logged; they do not
            stop the others.
        """
        slice_cfg.validate()
        cache_dir = Path(cache_dir)
        study_dir = cache_dir / "studies"
        study_dir.mkdir(parents=True, exist_ok=True)
        cfg_hash = _hash(json.dumps({"format": CACHE_FORMAT, "cfg": slice_cfg.to_dict()}, sort_keys=True))

        entries: list[tuple[StudySummary, Path, str]] = []
        errors: list[SkippedStudy] = []
        n_read = n_reused = 0
        for study in studies:
            try:
                key = _hash(cfg_hash + json.dumps(_file_stats(study.path)))
            except OSError as exc:
                errors.append(_record_error(study, StudyReadError(study.path, f"cannot stat it ({exc})")))
                continue
            summary = _load_entry(study, study_dir, key)
            if summary is not None:
                n_reused += 1
            else:
                try:
                    summary = _write_entry(study, slice_cfg, study_dir, key)
                except StudyReadError as exc:
                    errors.append(_record_error(study, exc))
                    continue
                n_read += 1
            entries.append((summary, study_dir / f"{key}.npy", key))
        _prune_stale(study_dir, {key for _, _, key in entries}, {str(s.path) for s in studies})

        combined_key = _hash(cfg_hash + json.dumps([key for _, _, key in entries]) +
                             json.dumps([[e.image_id, str(e.path), e.message] for e in errors]))
        if not (cache_dir / f"index-{combined_key}.npz").exists():
            _write_combined(cache_dir, combined_key, entries, errors, slice_cfg)
        atomic_write_text(cache_dir / "current.json", json.dumps({"key": combined_key}))
        _prune_combined(cache_dir, keep=combined_key)
        cache = cls._open_key(cache_dir, combined_key, n_read=n_read, n_reused=n_reused)
        logger.info("slice cache %s: %d slices from %d studies (%d read, %d reused, %d errors)",
                    cache_dir, len(cache), len(entries), n_read, n_reused, len(errors))
        return cache

    @classmethod
    def open(cls, cache_dir: str | Path) -> SliceCache:
        """Open the latest finished build in ``cache_dir`` without touching the source files.

        Raises:
            SliceCacheError: no finished build is there.
        """
        cache_dir = Path(cache_dir)
        for attempt in range(2):
            try:
                key = json.loads((cache_dir / "current.json").read_text(encoding="utf-8"))["key"]
            except (OSError, ValueError, KeyError) as exc:
                raise SliceCacheError(
                    f"no slice cache in '{cache_dir}' ({exc}); build it with SliceCache.build (training does)"
                ) from exc
            if attempt == 0 and not (cache_dir / f"index-{key}.npz").exists():
                continue  # a concurrent build replaced this key between the two reads: read the pointer again
            break
        return cls._open_key(cache_dir, key)

    @classmethod
    def _open_key(cls, cache_dir: Path, key: str, n_read: int = 0, n_reused: int = 0) -> SliceCache:
        index_path = cache_dir / f"index-{key}.npz"
        try:
            with np.load(index_path, allow_pickle=False) as index:
                image_ids = index["image_ids"].astype(str)
                slice_indices = index["slice_indices"].astype(np.int64)
                positions = index["positions"].astype(np.float64)
                meta = json.loads(str(index["meta"]))
        except (OSError, ValueError, KeyError) as exc:
            raise SliceCacheError(f"slice cache index '{index_path}' is unreadable ({exc}); rebuild the cache") from exc
        images = _open_images(cache_dir / f"slices-{key}.npy", meta["resolution"])
        if len(images) != len(image_ids):
            raise SliceCacheError(f"slice cache '{cache_dir}' is inconsistent ({len(images)} images, "
                                  f"{len(image_ids)} index rows); delete the folder and rebuild")
        studies = [StudySummary(s["image_id"], Path(s["path"]), int(s["n_slices"]), np.asarray(s["kept"], np.int64))
                   for s in meta["studies"]]
        errors = [SkippedStudy(e["image_id"], Path(e["path"]), e["message"]) for e in meta["errors"]]
        return cls(images, image_ids, slice_indices, positions, studies, errors,
                   SliceConfig.from_dict(meta["slice_cfg"]), cache_dir, n_read=n_read, n_reused=n_reused)


def cached_study_slices(path: str | Path, slice_cfg: SliceConfig, cache_dir: str | Path
                        ) -> tuple[np.ndarray, np.ndarray] | None:
    """The model-ready slices a build cached for one study as it is now: ``(uint8 [n, R, R] memory map,
    int64 [n] kept slice indices)``, or None when this version of the study (same files, same settings) was
    never cached. Nothing is read from the study itself."""
    cfg_hash = _hash(json.dumps({"format": CACHE_FORMAT, "cfg": slice_cfg.to_dict()}, sort_keys=True))
    try:
        key = _hash(cfg_hash + json.dumps(_file_stats(Path(path))))
        entry = _load_entry(Study(image_id="", path=Path(path)), Path(cache_dir) / "studies", key)
        if entry is None:
            return None
        images = np.load(Path(cache_dir) / "studies" / f"{key}.npy", mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return None
    return (images, entry.kept) if len(images) == len(entry.kept) else None


# ---------------------------------------------------------------------- helpers
def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _is_dicom_folder(folder: Path) -> bool:
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return False
    return any(looks_like_dicom_file(p) for p in files[:8])


def _file_stats(path: Path) -> list[Any]:
    """The slice cache's key for a study: its path, then the size and mtime of each of its files
    (:func:`~ss_stylegan.data.fingerprint.study_files`: a folder's files, a detached header's data files)."""
    path = path.resolve()
    files = study_files(path)
    if path.is_dir():
        return [str(path)] + [[p.name, *_stat(p)] for p in files]
    return [str(path), *_stat(path)] + [[p.name, *_stat(p)] for p in files[1:]]


def _stat(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _record_error(study: Study, exc: StudyReadError) -> SkippedStudy:
    logger.error("skipping study %r: %s", study.image_id, exc)
    return SkippedStudy(image_id=study.image_id, path=study.path, message=str(exc))


def _load_entry(study: Study, study_dir: Path, key: str) -> StudySummary | None:
    meta_path = study_dir / f"{key}.json"
    if not (meta_path.exists() and (study_dir / f"{key}.npy").exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return StudySummary(study.image_id, study.path, int(meta["n_slices"]), np.asarray(meta["kept"], np.int64))


def _write_entry(study: Study, cfg: SliceConfig, study_dir: Path, key: str) -> StudySummary:
    slices = read_study_slices(study.path, cfg, image_id=study.image_id)
    if len(slices.slices) == 0:
        logger.warning("study %r (%s): every slice was skipped as empty or constant", study.image_id, study.path)
    atomic_write(study_dir / f"{key}.npy", lambda fh: np.save(fh, slices.images, allow_pickle=False))
    meta = {
        "path": str(study.path.resolve()),
        "image_id": study.image_id,
        "n_slices": slices.n_slices,
        "kept": slices.slices.tolist(),
        "positions": slices.positions.tolist(),
    }
    atomic_write_text(study_dir / f"{key}.json", json.dumps(meta))
    return StudySummary(study.image_id, study.path, slices.n_slices, slices.slices)


def _prune_stale(study_dir: Path, keep: set[str], paths: Iterable[str]) -> None:
    """Delete older entries of the studies just built (same source path, other key)."""
    resolved = {str(Path(p).resolve()) for p in paths}
    for meta_path in study_dir.glob("*.json"):
        key = meta_path.stem
        if key in keep:
            continue
        try:
            path = json.loads(meta_path.read_text(encoding="utf-8")).get("path")
        except (OSError, ValueError):
            path = None
        if path is None or path in resolved:
            meta_path.unlink(missing_ok=True)
            (study_dir / f"{key}.npy").unlink(missing_ok=True)


def _write_combined(cache_dir: Path, key: str, entries: list[tuple[StudySummary, Path, str]],
                    errors: list[SkippedStudy], cfg: SliceConfig) -> None:
    res = cfg.resolution
    n_total = sum(len(summary.kept) for summary, _, _ in entries)

    def write_images(fh: IO[bytes]) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": (n_total, res, res)}
        np.lib.format.write_array_header_1_0(fh, header)
        for summary, npy, _ in entries:
            part = np.load(npy, mmap_mode="r")
            if part.shape != (len(summary.kept), res, res):
                raise SliceCacheError(f"cached slices {npy} have shape {part.shape}; delete it and rebuild")
            fh.write(np.ascontiguousarray(part).tobytes())

    image_ids, slice_indices, positions = [], [], []
    for summary, npy, k in entries:
        meta = json.loads((npy.parent / f"{k}.json").read_text(encoding="utf-8"))
        image_ids += [summary.image_id] * len(summary.kept)
        slice_indices.append(summary.kept)
        positions.append(np.asarray(meta["positions"], np.float64).reshape(-1, 3))
    meta = {
        "resolution": res,
        "slice_cfg": cfg.to_dict(),
        "studies": [{"image_id": s.image_id, "path": str(s.path), "n_slices": s.n_slices, "kept": s.kept.tolist()}
                    for s, _, _ in entries],
        "errors": [{"image_id": e.image_id, "path": str(e.path), "message": e.message} for e in errors],
    }
    arrays = {
        "image_ids": np.asarray(image_ids, dtype=str) if image_ids else np.empty(0, dtype="<U1"),
        "slice_indices": np.concatenate(slice_indices) if slice_indices else np.empty(0, np.int64),
        "positions": np.concatenate(positions) if positions else np.empty((0, 3), np.float64),
        "meta": np.asarray(json.dumps(meta)),
    }
    atomic_write(cache_dir / f"slices-{key}.npy", write_images)
    atomic_write(cache_dir / f"index-{key}.npz", lambda fh: np.savez(fh, **arrays))


def _prune_combined(cache_dir: Path, keep: str) -> None:
    for old in [*cache_dir.glob("slices-*.npy"), *cache_dir.glob("index-*.npz")]:
        if keep not in old.name:
            old.unlink(missing_ok=True)


def _open_images(path: Path, resolution: int) -> np.ndarray:
    try:
        with open(path, "rb") as fh:
            np.lib.format.read_magic(fh)
            shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        if shape[0] == 0:  # np.memmap cannot map zero bytes
            return np.zeros((0, resolution, resolution), dtype=np.uint8)
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise SliceCacheError(f"slice cache images '{path}' are unreadable ({exc}); rebuild the cache") from exc
