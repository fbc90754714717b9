"""Classifier ``classify``: 1-nearest-neighbour class of every slice of a study, from the slice map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ss_stylegan.data.readers import image_id_of

from lib.errors import NotFoundError, http_errors
from lib.service import SliceLabelService


class SliceClassifier(InferTask):
    """``POST /infer/classify?image=<id>`` (or with an uploaded file): per-slice class, score, neighbour.

    The HTTP request itself is served by :mod:`lib.routes` (in FastAPI's thread pool); this task is what
    MONAI Label lists in ``/info/`` and runs for its other callers (batch inference). MONAI Label resolves
    ``image`` to the datastore file before calling it; only studies directly inside the studies folder are
    classified here (uploads go through the route, which checks them first).
    """

    def __init__(self, service: SliceLabelService) -> None:
        super().__init__(
            type=InferType.CLASSIFICATION,
            labels=list(service.settings.classes),
            dimension=2,
            description="SS-StyleGAN: 1-nearest-neighbour slice classification in the t-SNE map of W",
        )
        self.service = service

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[None, dict[str, Any]]:
        with http_errors():
            image = request.get("image")
            path = Path(image) if isinstance(image, str) and image else None
            if path is None or path.parent.resolve() != self.service.studies.resolve() or not path.exists():
                raise NotFoundError("unknown image: give a datastore image id (see GET /datastore/)")
            return None, self.service.classify_image(image_id_of(path))
