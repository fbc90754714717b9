"""Place new slices into the existing map: published encoder -> W -> ``TSNEProjector.transform``.

Loaded lazily (first use) and kept for the model version of the slice map, so embedding a study added
after training, or an uploaded study, costs the encoder pass and the openTSNE transform only.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from ss_stylegan.checkpoint import load_model
from ss_stylegan.embedding import embed_images
from ss_stylegan.projection import TSNEProjector
from ss_stylegan.workspace import Workspace, WorkspaceError

log = logging.getLogger(__name__)


class MapEmbedder:
    """Encoder and projector of one model version, loaded on first use.

    Args:
        workspace: where the published checkpoint and the projector are.
        settings: app settings (device, batch size).
    """

    def __init__(self, workspace: Workspace, settings: Any) -> None:
        self.workspace = workspace
        self.settings = settings
        self._lock = threading.Lock()
        self._version: str | None = None
        self._model: Any = None
        self._projector: TSNEProjector | None = None

    def _load(self, model_version: str) -> None:
        if self._version == model_version:
            return
        model = load_model(self.workspace.published_dir, device=self.settings.device)
        if model.model_version != model_version:
            raise WorkspaceError(
                f"the published model is version {model.model_version} but the slice map was made with "
                f"{model_version}; train again (POST /train/ss_stylegan) to rebuild the map"
            )
        self._projector = TSNEProjector.load(self.workspace.projection_dir, model_version=model_version)
        self._model, self._version = model, model_version
        log.info("loaded encoder and projector of model %s", model_version)

    def embed_and_place(self, images_u8: np.ndarray, model_version: str) -> tuple[np.ndarray, np.ndarray]:
        """Embed ``uint8 [n, R, R]`` slices and place them in the map.

        Returns:
            ``(w [n, w_dim] float32, xy [n, 2] float32)``.
        """
        with self._lock:
            self._load(model_version)
            w = embed_images(self._model, images_u8, batch_size=64, device=self.settings.device)
            assert self._projector is not None
            xy = self._projector.transform(w)
        return np.asarray(w, dtype=np.float32), np.asarray(xy, dtype=np.float32)
