"""MONAI Label's inherited task routes, guarded (see :mod:`lib.guards` for the datastore routes):

- ``POST /batch/infer/{model}``: datastore ids only (``params.images``), a known model.
- ``POST /infer/{model}``, ``/infer/wsi*/{model}``, ``/activelearning/{strategy}``, ``/train/{model}``,
  ``/scoring/{method}``, ``PUT /model/{model}``: a name the app does not offer answers 404 (MONAI Label
  answered 500, some after writing a temp file).
- ``POST /train/``: the same one-training rule as ``POST /train/ss_stylegan`` (:mod:`lib.train_control`).
- ``/session/*``: not used by this app; 406 without reading an upload.
- ``POST /reload`` (MONAI Label serves it without any login): admin only, and 406: re-creating the app
  inside a running server would leave two label stores in one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Response
from monailabel.endpoints import batch_infer as batch_endpoint
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType

from ss_stylegan.labelling.validation import FieldError, boolean, identifier, integer, only_keys, text

from lib.auth import ADMIN, ANNOTATE, RBAC, READ, TRAIN, User
from lib.configs.settings import parse_train_request
from lib.datastore import AtomicLocalDatastore
from lib.errors import NotFoundError, NotUsedError, http_errors, redacted
from lib.routes import json_body
from lib.train_control import TrainControl

BATCH_FIELDS = ("device", "multi_gpu", "gpus", "logging", "save_label", "label_tag", "max_workers",
                "max_batch_size", "images", "labels")


def _batch_params(body: dict[str, Any]) -> dict[str, Any]:
    """Batch-infer parameters checked by type, with defaults that work on a CPU server (MONAI Label's
    default ``multi_gpu: true`` divides by the number of GPUs: zero on a CPU)."""
    only_keys(body, BATCH_FIELDS, field="params")
    for key in ("device", "gpus", "logging"):
        if key in body:
            text(body[key], f"params.{key}", 32)
    for key in ("multi_gpu", "save_label"):
        if key in body:
            boolean(body[key], f"params.{key}")
    for key in ("max_workers", "max_batch_size"):
        if key in body:
            integer(body[key], f"params.{key}", minimum=0)
    if "labels" in body and (not isinstance(body["labels"], list)
                             or not all(isinstance(v, str) and len(v) <= 64 for v in body["labels"])):
        raise FieldError("params.labels", "must be a list of class names")
    return {"multi_gpu": False, "device": "cpu", **body}


def _refusal(role: str, message: Callable[[str], str]) -> Callable[..., None]:
    """A handler answering 404 with ``message(name)`` for a name the app does not offer (after auth)."""
    def refuse(name: str, user: User = Depends(RBAC(role))) -> None:
        with http_errors():
            raise NotFoundError(message(name))
    return refuse


def build_task_guards(
    datastore: Callable[[], AtomicLocalDatastore],
    control: TrainControl,
    models: Callable[[], list[str]],
    strategies: Callable[[], list[str]],
) -> APIRouter:
    """The guarded copies of MONAI Label's task routes (install them after the app's own, before MONAI Label's).

    Args:
        datastore: the app's datastore.
        control: training start / stop.
        models: the app's infer model names; strategies: its strategy names.
    """
    router = APIRouter()

    def known_image(image: str) -> str:
        identifier(image, "image")
        if not datastore().get_image_uri(image):
            raise NotFoundError(f"image {image!r} is not in the datastore; list images with GET /datastore/?output=all")
        return image

    # -- names the app does not offer --------------------------------------------------------------------------
    refusals: list[tuple[str, str, str, Callable[[str], str]]] = [
        ("POST", "/infer/{name}", READ, lambda n: f"unknown model {n!r}; this app offers {models()}"),
        ("POST", "/infer/wsi/{name}", READ, lambda n: f"this app has no whole-slide-image models (asked for {n!r}); "
                                                      f"its models are {models()}"),
        ("POST", "/infer/wsi_v2/{name}", READ, lambda n: f"this app has no whole-slide-image models (asked for "
                                                         f"{n!r}); its models are {models()}"),
        ("POST", "/activelearning/{name}", ANNOTATE, lambda n: f"unknown strategy {n!r}; this app offers "
                                                               f"{strategies()}"),
        ("POST", "/scoring/{name}", ANNOTATE, lambda n: f"unknown scoring method {n!r}; this app has none"),
        ("PUT", "/model/{name}", ANNOTATE, lambda n: f"this app has no model file to upload ({n!r}): its model is "
                                                     "trained from the studies with POST /train/ss_stylegan"),
    ]
    for method, path, role, message in refusals:
        router.add_api_route(path, _refusal(role, message), methods=[method], include_in_schema=False)

    # -- batch inference: datastore ids only ------------------------------------------------------------------------
    @router.post("/batch/infer/{model}", tags=["Infer"], summary="Classify many datastore images in the background")
    def batch_infer(user: User = Depends(RBAC(TRAIN)), model: str = "",
                    images: BatchInferImageType = BatchInferImageType.IMAGES_ALL,
                    body: dict[str, Any] = Depends(json_body), run_sync: bool = False) -> Any:
        with http_errors():
            if model not in models():
                raise NotFoundError(f"unknown model {model!r}; this app offers {models()}")
            body = _batch_params(body)
            if "images" in body:
                _check_batch_images(body["images"], known_image)
            if "label_tag" in body:
                datastore().check_tag(identifier(body["label_tag"], "params.label_tag"), writing=True)
            return redacted(batch_endpoint.run(model, images, body, run_sync))

    _add_training_routes(router, control)
    _add_unused_routes(router)
    return router


def _check_batch_images(ids: Any, known_image: Callable[[str], str]) -> None:
    """``params.images`` of a batch inference: datastore image ids, or one of MONAI Label's selections."""
    if isinstance(ids, str):
        if ids not in {t.value for t in BatchInferImageType}:
            raise FieldError("params.images", f"must be a list of datastore image ids or one of "
                                              f"{[t.value for t in BatchInferImageType]}")
    elif isinstance(ids, list):
        for i, image in enumerate(ids):
            identifier(image, f"params.images[{i}]")
            known_image(image)
    else:
        raise FieldError("params.images", "must be a list of datastore image ids (see GET /datastore/?output=all)")


def _add_training_routes(router: APIRouter, control: TrainControl) -> None:
    # -- training through MONAI Label's generic routes ------------------------------------------------------------
    @router.post("/train/", tags=["Train"], summary="Run every trainer (one training at a time)",
                 include_in_schema=False)
    def train_all(user: User = Depends(RBAC(TRAIN)), body: dict[str, Any] = Depends(json_body),
                  run_sync: bool = False) -> Any:
        with http_errors():
            only_keys(body, control.trainers)
            params = {}
            for name in control.trainers:
                sub = body.get(name, {})
                if not isinstance(sub, dict):
                    raise FieldError(name, "must be an object of training settings")
                params = parse_train_request(sub)
            return redacted(control.start(None, params, run_sync))

    @router.post("/train/{model}", tags=["Train"], summary="Run a trainer (this app: ss_stylegan)")
    def train_model(user: User = Depends(RBAC(TRAIN)), model: str = "", body: dict[str, Any] = Depends(json_body),
                    run_sync: bool = False) -> Any:
        with http_errors():
            return redacted(control.start(model, parse_train_request(body), run_sync))


def _add_unused_routes(router: APIRouter) -> None:
    # -- sessions: not used ---------------------------------------------------------------------------------------
    def no_sessions(user: User = Depends(RBAC(READ))) -> Response:
        with http_errors():
            raise NotUsedError("sessions are not used by this app: upload a study with PUT /datastore/image, or "
                               "classify a file with POST /infer/classify")

    def no_reload(user: User = Depends(RBAC(ADMIN))) -> Response:
        with http_errors():
            raise NotUsedError("reloading the app inside the running server is not supported (it would leave two "
                               "copies of the label store in one process): restart the server instead")

    router.add_api_route("/reload", no_reload, methods=["POST"], include_in_schema=False)
    router.add_api_route("/session/", no_sessions, methods=["PUT"], tags=["Session"], include_in_schema=False)
    router.add_api_route("/session/{session_id}", no_sessions, methods=["GET", "DELETE"], tags=["Session"],
                         include_in_schema=False)
