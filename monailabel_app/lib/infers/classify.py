"""Classifier ``classify``: 1-nearest-neighbour class of every slice of a study, from the slice map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ss_stylegan.data.readers import image_id_of
from ss_stylegan.labelling.errors import NotFoundError

from lib.handlers import Handlers


class SliceClassifier(InferTask):
    """``POST /infer/classify?image=<id>`` (or with an uploaded file): per-slice class, score, neighbour.

    The HTTP request is served by :mod:`lib.routes`; this task is what MONAI Label lists in ``/info/`` and runs
    for its other callers (batch inference). Both call the same handler
    (:meth:`lib.handlers.Handlers.classify_image`). MONAI Label resolves ``image`` to the datastore file before
    calling it; only studies directly inside the studies folder are classified here (uploads go through the
    route, which checks them first).
    """

    def __init__(self, handlers: Handlers) -> None:
        super().__init__(
            type=InferType.CLASSIFICATION,
            labels=list(handlers.settings.classes),
            dimension=2,
            description="SS-StyleGAN: 1-nearest-neighbour slice classification in the t-SNE map of W",
        )
        self.handlers = handlers

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[None, dict[str, Any]]:
        image = request.get("image")
        path = Path(image) if isinstance(image, str) and image else None
        if path is None or path.parent.resolve() != self.handlers.service.folder.resolve() or not path.exists():
            raise NotFoundError("unknown image: give a datastore image id (see GET /datastore/)")
        return None, self.handlers.classify_image(image_id_of(path))
