"""From a slice cache and a checkpoint to a slice map: embed every slice into W, then draw the t-SNE map.

The server's trainer calls :func:`map_from_checkpoint` at every milestone of a training (a new map every few
minutes) and at its end, and publishes the result with :meth:`ss_stylegan.workspace.Workspace.publish`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ss_stylegan.checkpoint import load_model
from ss_stylegan.data.cache import SliceCache
from ss_stylegan.embedding import embed_images
from ss_stylegan.projection import TSNEProjector
from ss_stylegan.workspace import SliceMap


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
) -> tuple[SliceMap, TSNEProjector]:
    """Embed every slice of ``cache`` with the encoder of ``checkpoint`` and fit the t-SNE map.

    Returns the slice map (not yet published) and the fitted projector, which places slices added later.
    ``errors``, ``fingerprints`` and ``training`` are recorded in the map as given; ``n_jobs`` threads fit the
    map (the trainer gives every core: training is paused meanwhile).
    """
    model = load_model(checkpoint, device=device)
    w = embed_images(model, cache.images, batch_size=batch_size, device=device)
    projector = TSNEProjector(perplexity=perplexity, random_state=random_state, n_jobs=n_jobs)
    xy = projector.fit_transform(w, model_version=model.model_version)
    slice_map = SliceMap(
        image_ids=cache.image_ids, slices=cache.slices, positions=cache.positions, w=w, xy=xy,
        model_version=model.model_version, errors=dict(errors or {}),
        depths={s.image_id: int(s.n_slices) for s in cache.studies}, fingerprints=dict(fingerprints or {}),
        training=dict(training or {}),
    )
    return slice_map, projector
