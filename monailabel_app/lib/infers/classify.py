"""Classifier ``classify``: 1-nearest-neighbour class of every slice of a study, from the slice map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from ss_stylegan.data.readers import image_id_of

from lib.routes import classify_errors
from lib.service import NotFoundError, SliceLabelService


class SliceClassifier(InferTask):
    """``POST /infer/classify?image=<id>`` (or with an uploaded file): per-slice class, score, neighbour.

    The HTTP request itself is served by :mod:`lib.routes` (in FastAPI's thread pool); this task is what
    MONAI Label lists in ``/info/`` and runs for its other callers. MONAI Label resolves ``image`` to the
    datastore file before calling it; a path inside the studies folder is a datastore image, any other
    path is an uploaded study placed into the map.
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
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise HTTPException(
                status_code=404,
                detail="unknown image: give ?image=<datastore image id> (see GET /datastore/) or upload a file",
            )
        path = Path(image)
        with classify_errors():
            if path.parent.resolve() == self.service.studies.resolve() and path.exists():
                return None, self.service.classify_image(image_id_of(path))
            if not path.exists():
                raise NotFoundError(f"image {image!r} is not in the datastore; list images with GET /datastore/")
            return None, self.service.classify_file(path)
