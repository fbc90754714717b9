"""Place new slices into the existing map: published encoder -> W -> ``TSNEProjector.transform``.

Loaded lazily (first use) from the published version folder of the slice map and kept while that
version's model files are in use, so embedding a study added after training, or an uploaded study, costs the
encoder pass and the openTSNE transform only. A map update is a new version whose model files are hard links
of its parent's: the same files, so the loaded model is kept.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from ss_stylegan.maps.projection import ProjectionError, TSNEProjector
from ss_stylegan.maps.slice_map import MapVersion, SliceMap
from ss_stylegan.maps.versions import WorkspaceError
from ss_stylegan.model.checkpoint import CheckpointError, load_model
from ss_stylegan.model.embedding import embed_images
from ss_stylegan.workspace import Workspace

log = logging.getLogger(__name__)


class MapEmbedder:
    """Encoder and projector of one model version, loaded on first use.

    Args:
        workspace: where the published checkpoint and the projector are.
        device: where the encoder runs (``cpu``, ``cuda``, ``cuda:N``).
        batch_size: slices per encoder pass.
    """

    def __init__(self, workspace: Workspace, device: str = "cpu", batch_size: int = 64) -> None:
        self.workspace = workspace
        self.device = device
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[Any, ...] | None = None  # (model version, identity of the model files)
        self._model: Any = None
        self._projector: TSNEProjector | None = None

    def _load(self, version: MapVersion, model_version: str) -> None:
        key = (model_version, _model_files(version))
        if self._loaded == key:
            return
        try:
            model = load_model(version.checkpoint_dir, device=self.device)
            if model.model_version != model_version:
                raise WorkspaceError(
                    f"the published model is version {model.model_version} but the slice map was made with "
                    f"{model_version}"
                )
            projector = TSNEProjector.load(version.projection_dir, model_version=model_version)
        except (CheckpointError, ProjectionError, OSError, WorkspaceError) as err:
            raise WorkspaceError(
                f"the published model {version.name} cannot place new slices into the map ({err}); "
                "train again (POST /train/ss_stylegan) to publish a complete model"
            ) from err
        self._model, self._projector, self._loaded = model, projector, key
        log.info("loaded encoder and projector of model %s from %s", model_version, version.folder)

    def embed_and_place(self, images_u8: np.ndarray, slice_map: SliceMap) -> tuple[np.ndarray, np.ndarray]:
        """Embed ``uint8 [n, R, R]`` slices and place them in ``slice_map`` (with its published model).

        Returns:
            ``(w [n, w_dim] float32, xy [n, 2] float32)``.

        Raises:
            WorkspaceError: the map's published checkpoint or projector is missing or does not match it.
        """
        if slice_map.version is None:
            raise WorkspaceError("the slice map was not published (no version folder); train again")
        with self._lock:
            self._load(slice_map.version, slice_map.model_version)
            w = embed_images(self._model, images_u8, batch_size=self.batch_size, device=self.device)
            assert self._projector is not None
            xy = self._projector.transform(w)
        return np.asarray(w, dtype=np.float32), np.asarray(xy, dtype=np.float32)


def _model_files(version: MapVersion) -> tuple[tuple[str, int, int, int, int], ...]:
    """``(path, device, inode, size, mtime)`` of every file of a version's checkpoint and projector: the same
    for versions that share those files by hard links."""
    files = []
    for folder in (version.checkpoint_dir, version.projection_dir):
        for path in sorted(folder.glob("*")) if folder.is_dir() else ():
            try:
                st = os.stat(path)
            except OSError:
                continue
            files.append((f"{folder.name}/{path.name}", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(files)
