"""MONAI Label's inherited routes, guarded: the app serves each route that takes an image id, label tag,
model, strategy, session or upload itself, with the same role as MONAI Label's endpoint, and checks every
value before MONAI Label's own function runs.

What the guards add to MONAI Label 0.8.5's behaviour:

- ``/datastore/*``: image ids, label ids and tags are single names (no ``..``, no absolute path, no
  separator, no NUL, at most 200 characters): nothing resolves outside the studies folder. The app's label
  tag ``slice_class`` cannot be written or deleted here (use ``/slicelabels/``). Uploads are capped (bytes,
  unpacked bytes, declared voxels), single-file formats only, checked before any reader opens them, and
  their temporary files are always removed. Unknown ids answer 404, and answers carry no server paths.
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

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from monailabel.endpoints import batch_infer as batch_endpoint
from monailabel.endpoints import datastore as datastore_endpoint
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType

from ss_stylegan.data.readers import image_id_of
from ss_stylegan.uploads import UploadLimits, received_upload
from ss_stylegan.validation import FieldError, boolean, identifier, integer, json_object, only_keys, text

from lib.auth import ADMIN, ANNOTATE, READ, TRAIN, RBAC, User
from lib.configs.settings import parse_train_request
from lib.datastore import AtomicLocalDatastore, LabelCountMirror
from lib.errors import NotFoundError, NotUsedError, http_errors, redacted
from lib.routes import json_body
from lib.train_control import TrainControl
from lib.uploads import bounded_route

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


def build_guards(
    datastore: Callable[[], AtomicLocalDatastore],
    limits: Callable[[], UploadLimits],
    mirror: LabelCountMirror,
    control: TrainControl,
    models: Callable[[], list[str]],
    strategies: Callable[[], list[str]],
) -> APIRouter:
    """The guarded copies of MONAI Label's routes (install them after the app's own, before MONAI Label's).

    Args:
        datastore: the app's datastore.
        limits: the upload limits (``--conf max_upload_*``).
        mirror: the label-count mirror, flushed before image info is read.
        control: training start / stop.
        models: the app's infer model names; strategies: its strategy names.
    """
    router = APIRouter()
    upload_route = bounded_route(lambda: limits().max_bytes)

    def known_image(image: str) -> str:
        identifier(image, "image")
        if not datastore().get_image_uri(image):
            raise NotFoundError(f"image {image!r} is not in the datastore; list images with GET /datastore/")
        return image

    # -- datastore: images -----------------------------------------------------------------------------------
    @router.get("/datastore/", tags=["Datastore"], summary="All images and labels of the datastore")
    def list_datastore(user: User = Depends(RBAC(READ)), output: str | None = None) -> Any:
        with http_errors():
            if output is not None and output not in ("stats", "train", "all"):
                raise FieldError("output", f"must be stats, train or all, got {output!r}")
            return redacted(datastore_endpoint.datastore(datastore_endpoint.ResultType(output or "stats")))

    def add_image(user: User = Depends(RBAC(ANNOTATE)), image: str | None = None, params: str = Form("{}"),
                  file: UploadFile = File(...)) -> dict[str, Any]:
        with http_errors():
            info = json_object(params, "params")
            image_id = identifier(image, "image") if image else None
            with received_upload(file.file, file.filename, limits()) as (path, _):
                image_id = image_id or identifier(image_id_of(path), "image")
                info["user"] = user.username
                return {"image": datastore().add_image(image_id, str(path), info)}

    for path in ("/datastore/image", "/datastore/"):
        router.add_api_route(path, add_image, methods=["PUT"], tags=["Datastore"], route_class_override=upload_route,
                             summary="Upload a new study (single file, size-capped)",
                             include_in_schema=path != "/datastore/")

    def remove_image(user: User = Depends(RBAC(ADMIN)), id: str = Query(...)) -> dict[str, Any]:
        with http_errors():
            datastore().remove_image(known_image(id))
            return {}

    for path in ("/datastore/image", "/datastore/"):
        router.add_api_route(path, remove_image, methods=["DELETE"], tags=["Datastore"],
                             summary="Remove a study and its generic labels", include_in_schema=path != "/datastore/")

    @router.head("/datastore/image", tags=["Datastore"], summary="Check if an image exists")
    def check_image(user: User = Depends(RBAC(READ)), image: str = Query(...), check_sum: str | None = None) -> Any:
        with http_errors():
            if check_sum is not None:
                text(check_sum, "check_sum", 200)
            return datastore_endpoint.download_image(known_image(image), check_only=True, check_sum=check_sum)

    @router.get("/datastore/image", tags=["Datastore"], summary="Download a study")
    def download_image(user: User = Depends(RBAC(READ)), image: str = Query(...)) -> Any:
        with http_errors():
            return datastore_endpoint.download_image(known_image(image))

    @router.get("/datastore/image/info", tags=["Datastore"], summary="Info of a study (with its slice label counts)")
    def image_info(user: User = Depends(RBAC(READ)), image: str = Query(...)) -> dict[str, Any]:
        with http_errors():
            known_image(image)
            mirror.flush()
            info = datastore().get_image_info(image)
            info.pop("path", None)  # a server path
            return redacted(info)

    @router.put("/datastore/image/info", tags=["Datastore"], summary="Merge fields into the info of a study")
    def put_image_info(user: User = Depends(RBAC(ANNOTATE)), image: str = Query(...),
                       info: str = Form("{}")) -> Any:
        with http_errors():
            fields = json_object(info, "info")
            fields["user"] = user.username
            datastore().update_image_info(known_image(image), fields)
            return {}

    # -- datastore: generic labels (never the app's tag) ----------------------------------------------------
    def save_label(user: User = Depends(RBAC(ANNOTATE)), image: str = Query(...), tag: str = "final",
                   params: str = Form("{}"), label: UploadFile = File(...)) -> dict[str, Any]:
        with http_errors():
            store = datastore()
            store.check_tag(tag, writing=True)  # refuse the app's tag before reading the upload
            known_image(image)
            info = json_object(params, "params")
            with received_upload(label.file, label.filename, limits()) as (path, _):
                label_id = store.save_label(image, str(path), tag, info)
            return {"image": image, "label": label_id}

    router.add_api_route("/datastore/label", save_label, methods=["PUT"], tags=["Datastore"],
                         route_class_override=upload_route, summary="Save a label file under a tag (not slice_class)")

    @router.delete("/datastore/label", tags=["Datastore"], summary="Remove a label file (not slice_class)")
    def remove_label(user: User = Depends(RBAC(ADMIN)), id: str = Query(...), tag: str = Query(...)) -> Any:
        with http_errors():
            store = datastore()
            store.check_tag(tag, writing=True)
            if not store.get_label_uri(id, tag):
                raise NotFoundError(f"image {id!r} has no label with tag {tag!r}")
            store.remove_label(id, tag)
            return {}

    @router.head("/datastore/label", tags=["Datastore"], summary="Check if a label exists")
    def check_label(user: User = Depends(RBAC(READ)), image: str = Query(...), tag: str = Query(...)) -> Any:
        with http_errors():
            datastore().get_label_uri(image, tag)  # checks both names
            return datastore_endpoint.download_label(image, tag, check_only=True)

    @router.get("/datastore/label", tags=["Datastore"], summary="Download a label file")
    def download_label(user: User = Depends(RBAC(READ)), label: str = Query(...), tag: str = Query(...)) -> Any:
        with http_errors():
            datastore().get_label_uri(label, tag)
            return datastore_endpoint.download_label(label, tag)

    @router.get("/datastore/label/info", tags=["Datastore"], summary="Info of a label")
    def label_info(user: User = Depends(RBAC(READ)), label: str = Query(...), tag: str = Query(...)) -> Any:
        with http_errors():
            return redacted(datastore().get_label_info(label, tag))

    def put_label_info(user: User = Depends(RBAC(ANNOTATE)), label: str = Query(...), tag: str = Query(...),
                       info: str = Form("{}")) -> Any:
        with http_errors():
            fields = json_object(info, "info")
            fields["user"] = user.username
            store = datastore()
            store.check_tag(tag, writing=True)
            if not store.get_label_uri(label, tag):
                raise NotFoundError(f"image {label!r} has no label with tag {tag!r}")
            store.update_label_info(label, tag, fields)
            return {}

    router.add_api_route("/datastore/label/info", put_label_info, methods=["PUT"], tags=["Datastore"],
                         summary="Merge fields into the info of a label")

    def put_label_info_old(user: User = Depends(RBAC(ANNOTATE)), label: str = Query(...), tag: str = Query(...),
                           params: str = Form("{}")) -> Any:
        return put_label_info(user, label, tag, params)

    router.add_api_route("/datastore/updatelabelinfo", put_label_info_old, methods=["PUT"], tags=["Datastore"],
                         include_in_schema=False)

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
                ids = body["images"]
                if isinstance(ids, str):
                    ids = BatchInferImageType(ids) if ids in {t.value for t in BatchInferImageType} else None
                    if ids is None:
                        raise FieldError("params.images", f"must be a list of datastore image ids or one of "
                                                          f"{[t.value for t in BatchInferImageType]}")
                elif isinstance(ids, list):
                    for i, image in enumerate(ids):
                        identifier(image, f"params.images[{i}]")
                        known_image(image)
                else:
                    raise FieldError("params.images", "must be a list of datastore image ids (see GET /datastore/)")
            if "label_tag" in body:
                datastore().check_tag(identifier(body["label_tag"], "params.label_tag"), writing=True)
            return redacted(batch_endpoint.run(model, images, body, run_sync))

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
    return router
