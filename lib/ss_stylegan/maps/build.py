"""From a studies folder and a model to a slice map: slice cache -> embed every slice into W -> t-SNE map.

- :func:`read_studies`: every study of a folder into the slice cache, with the studies' fingerprints (stamp
  and content hash, taken before reading) and the errors of the ones that cannot be read.
- :func:`map_from_checkpoint`: the cache embedded with a checkpoint's encoder and mapped with openTSNE.
- :func:`map_from_studies`: both, for a model trained elsewhere (``python -m ss_stylegan map`` publishes its
  result into a server's workspace, which serves it as is).

The server's trainer calls :func:`read_studies` before training and :func:`map_from_checkpoint` at every
milestone of the training (a new map every few minutes) and at its end, and publishes the result with
:meth:`ss_stylegan.workspace.Workspace.publish`.

Memory: a large cache's embeddings (above ``STREAM_BYTES``) are streamed batch by batch into a file in the
cache folder and used memory-mapped (:func:`~ss_stylegan.model.embedding.embed_to_file`), so the process holds
one batch of slices and embeddings at a time, not the whole ``[N, w_dim]`` array (2 GB at a million slices
and ``w_dim`` 512). The file is unlinked as soon as it is mapped: the mapping keeps it readable for as long
as the map uses it (publishing copies it into the version folder), and nothing is left behind on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.config import SliceConfig
from ss_stylegan.data.cache import SliceCache, find_studies
from ss_stylegan.data.fingerprint import FingerprintCache
from ss_stylegan.maps.projection import TSNEProjector
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.model.checkpoint import load_model
from ss_stylegan.model.embedding import embed_images, embed_to_file
from ss_stylegan.model.networks import SSStyleGAN
from ss_stylegan.training.lock import process_running

log = logging.getLogger(__name__)

STREAM_BYTES = 64 * 1024 * 1024
"""Embeddings larger than this (``N * w_dim * 4`` bytes: 32,768 slices at ``w_dim`` 512) are streamed to a
memory-mapped file; smaller ones are kept in memory."""

EMBEDDINGS_DIR = "embeddings"
"""Folder of the slice cache that holds the streamed embeddings while they are written."""

_OWNED = re.compile(r"w-(\d+)-\d+\.npy")


def map_from_checkpoint(
    cache: SliceCache,
    checkpoint: Path,
    *,
    perplexity: float,
    random_state: int,
    device: str = "cpu",
    batch_size: int = 64,
    errors: dict[str, str] | None = None,
    fingerprints: dict[str, dict[str, Any]] | None = None,
    training: dict[str, Any] | None = None,
    n_jobs: int = 1,
    stream_bytes: int = STREAM_BYTES,
) -> tuple[SliceMap, TSNEProjector]:
    """Embed every slice of ``cache`` with the encoder of ``checkpoint`` and fit the t-SNE map.

    Returns the slice map (not yet published) and the fitted projector, which places slices added later.
    ``errors``, ``fingerprints`` and ``training`` are recorded in the map as given; ``n_jobs`` threads fit the
    map (the trainer gives every core: training is paused meanwhile). Embeddings above ``stream_bytes`` are
    streamed to a memory-mapped file (see the module docstring): the map's ``w`` is then a read-only memory
    map, which :meth:`~ss_stylegan.workspace.Workspace.publish` writes out without copying it in memory.
    """
    model = load_model(checkpoint, device=device)
    if len(cache) * model.cfg.w_dim * 4 > stream_bytes:
        w = _embed_streamed(model, cache, batch_size, device)
    else:
        w = embed_images(model, cache.images, batch_size=batch_size, device=device)
    projector = TSNEProjector(perplexity=perplexity, random_state=random_state, n_jobs=n_jobs)
    xy = projector.fit_transform(w, model_version=model.model_version)
    slice_map = SliceMap(
        image_ids=cache.image_ids, slices=cache.slices, positions=cache.positions, w=w, xy=xy,
        model_version=model.model_version, errors=dict(errors or {}),
        depths={s.image_id: int(s.n_slices) for s in cache.studies}, fingerprints=dict(fingerprints or {}),
        training=dict(training or {}), slice_cfg=cache.slice_cfg.to_dict(),
    )
    return slice_map, projector


@dataclasses.dataclass(frozen=True)
class StudiesRead:
    """A studies folder read into its slice cache."""

    cache: SliceCache
    errors: dict[str, str]                      # image id -> why the study cannot be used
    fingerprints: dict[str, dict[str, Any]]     # image id -> Fingerprint.to_dict(), stamped before reading


# content hashes of the studies this process has read, kept per stamp: a training publishing a map every few
# minutes hashes each study once, not at every publish
_FINGERPRINTS = FingerprintCache()


def read_studies(studies: str | Path, slice_cfg: SliceConfig, cache_dir: str | Path) -> StudiesRead:
    """Every study of ``studies`` (files and DICOM series folders) into the slice cache in ``cache_dir``
    (studies read before with the same settings are reused).

    The fingerprints (stamp and content hash) are taken before reading, so a study changed while it is read
    shows as changed to the server later; the hash lets a server over a copy of the folder (new inodes and
    times) recognise the same studies instead of reading them all again."""
    found = find_studies(Path(studies))
    fingerprints = {s.image_id: fp.to_dict() for s in found if (fp := _FINGERPRINTS.fingerprint(s.path)) is not None}
    cache = SliceCache.build(found, slice_cfg, Path(cache_dir))
    return StudiesRead(cache=cache, errors={e.image_id: e.message for e in cache.errors}, fingerprints=fingerprints)


def map_from_studies(
    studies: str | Path,
    checkpoint: Path,
    slice_cfg: SliceConfig,
    cache_dir: str | Path,
    *,
    perplexity: float,
    random_state: int,
    device: str = "cpu",
    batch_size: int = 64,
    training: dict[str, Any] | None = None,
    n_jobs: int = 1,
) -> tuple[SliceMap, TSNEProjector]:
    """A slice map of every study of a folder with a trained model: :func:`read_studies` then
    :func:`map_from_checkpoint`. ``slice_cfg`` must be the one the model was trained with.

    Raises:
        SliceCacheError, CheckpointError: see those functions. ValueError: no usable slice in the folder.
    """
    if not find_studies(Path(studies)):
        raise ValueError(f"no studies (NIfTI, NRRD, MetaImage, DICOM series, PNG, JPEG) found in {studies}")
    read = read_studies(studies, slice_cfg, cache_dir)
    if len(read.cache) == 0:
        raise ValueError(f"no usable slice in {studies}" + (f"; unreadable: {read.errors}" if read.errors else ""))
    return map_from_checkpoint(read.cache, checkpoint, perplexity=perplexity, random_state=random_state,
                               device=device, batch_size=batch_size, errors=read.errors,
                               fingerprints=read.fingerprints, training=training, n_jobs=n_jobs)


def _embed_streamed(model: SSStyleGAN, cache: SliceCache, batch_size: int, device: str) -> np.ndarray:
    """The embeddings of every slice of ``cache``, written batch by batch to a file of the cache folder and
    returned memory-mapped; the file is unlinked once mapped (see the module docstring)."""
    folder = Path(cache.cache_dir) / EMBEDDINGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _remove_orphans(folder)
    path = folder / f"w-{os.getpid()}-{threading.get_ident()}.npy"
    log.info("embedding %d slices into %s (memory-mapped)", len(cache), path)
    try:
        return embed_to_file(model, cache.images, path, batch_size=batch_size, device=device)
    finally:
        path.unlink(missing_ok=True)


def _remove_orphans(folder: Path) -> None:
    """Remove the files (finished or half-written) that processes no longer running left in ``folder``."""
    for entry in folder.iterdir():
        found = _OWNED.search(entry.name)
        if found is None or process_running(int(found.group(1))):
            continue
        entry.unlink(missing_ok=True)

