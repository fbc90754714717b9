"""MONAI Label's inherited datastore routes, guarded: the app serves each route that takes an image id, label
tag or upload itself, with the same role as MONAI Label's endpoint, and checks every value before MONAI
Label's own function runs (the task routes are in :mod:`lib.guards_tasks`).

What the guards add to MONAI Label 0.8.5's behaviour:

- ``/datastore/*``: image ids, label ids and tags are single names (no ``..``, no absolute path, no
  separator, no NUL, at most 200 characters): nothing resolves outside the studies folder. The app's label
  tag ``slice_class`` cannot be written or deleted here (use ``/slicelabels/``). Uploads are capped (bytes,
  unpacked bytes, declared voxels), single-file formats only, checked before any reader opens them, and
  their temporary files are always removed. Unknown ids answer 404, and answers carry no server paths.
- the task routes (batch infer, unknown names, generic training, sessions, reload): :mod:`lib.guards_tasks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from monailabel.endpoints import datastore as datastore_endpoint

from ss_stylegan.data.readers import image_id_of
from ss_stylegan.data.uploads import UploadLimits, received_upload
from ss_stylegan.labelling.validation import FieldError, identifier, json_object, text

from lib.auth import ADMIN, ANNOTATE, RBAC, READ, User
from lib.datastore import AtomicLocalDatastore
from lib.errors import NotFoundError, http_errors, redacted
from lib.label_counts import LabelCountMirror
from lib.uploads import bounded_route


def build_guards(
    datastore: Callable[[], AtomicLocalDatastore],
    limits: Callable[[], UploadLimits],
    mirror: LabelCountMirror,
) -> APIRouter:
    """The guarded copies of MONAI Label's routes (install them after the app's own, before MONAI Label's).

    Args:
        datastore: the app's datastore.
        limits: the upload limits (``--conf max_upload_*``).
        mirror: the label-count mirror, flushed before image info or the listing is read.
    """
    router = APIRouter()
    upload_route = bounded_route(lambda: limits().max_bytes)

    def known_image(image: str) -> str:
        identifier(image, "image")
        if not datastore().get_image_uri(image):
            raise NotFoundError(f"image {image!r} is not in the datastore; list images with GET /datastore/?output=all")
        return image

    _add_image_routes(router, datastore, limits, mirror, upload_route, known_image)
    _add_label_routes(router, datastore, limits, upload_route, known_image)
    return router


def _add_image_routes(router: APIRouter, datastore: Callable[[], AtomicLocalDatastore],
                      limits: Callable[[], UploadLimits], mirror: LabelCountMirror, upload_route: Any,
                      known_image: Callable[[str], str]) -> None:
    # -- datastore: images -----------------------------------------------------------------------------------
    @router.get("/datastore/", tags=["Datastore"], summary="All images and labels of the datastore")
    def list_datastore(user: User = Depends(RBAC(READ)), output: str | None = None) -> Any:
        with http_errors():
            if output is not None and output not in ("stats", "train", "all"):
                raise FieldError("output", f"must be stats, train or all, got {output!r}")
            mirror.flush()  # the label counts of the labels made so far
            answer = datastore_endpoint.datastore(datastore_endpoint.ResultType(output or "stats"))
            if (output or "stats") == "stats" and isinstance(answer, dict):
                store = datastore()  # "completed": studies with slice labels too (MONAI Label counts label files)
                labelled = sum(1 for i in store.list_images()
                               if any((store.get_image_info(i).get(store.protected_info) or {}).values()))
                answer = {**answer, "completed": max(int(answer.get("completed", 0)), labelled)}
            return redacted(answer)

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


def _add_label_routes(router: APIRouter, datastore: Callable[[], AtomicLocalDatastore],
                      limits: Callable[[], UploadLimits], upload_route: Any, known_image: Callable[[str], str]) -> None:
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
