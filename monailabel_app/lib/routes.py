"""HTTP routes the app adds to MONAI Label's FastAPI server: ``/slicelabels/``, ``/slicemap/`` (with one
slice's model-ready PNG at ``/slicemap/slice`` and a DICOM series study as a zip at ``/slicemap/series``), and
its own ``POST /activelearning/{strategy}`` for every strategy, ``POST /infer/classify``, ``POST /train/ss_stylegan``,
``GET /train/`` and ``DELETE /train/``.

Every handler takes MONAI Label's auth dependency first (``Depends(RBAC(role))``, roles in :mod:`lib.auth`),
so with auth on a request without a token is answered 401 before anything else is read. JSON bodies are
parsed strictly (:func:`ss_stylegan.labelling.validation.json_object`: no ``NaN``, no unknown fields) and every
value is checked (booleans are not numbers, strings are bounded and printable); a bad one gets 422 naming
the field. Errors map to status codes in one table (:mod:`lib.errors`).

Route functions are plain ``def`` (FastAPI runs them in its thread pool, so they never block the event loop)
and only translate HTTP to :class:`~lib.handlers.Handlers` calls, the same the MONAI Label task objects make.
The active-learning routes exist because MONAI Label's own endpoint turns an answer without ``id`` into a
500; ours answers 200 ``{"done": true, "message": ...}`` when nothing is left, and 409 before training. The
classify route exists because MONAI Label's infer endpoint is ``async def``: reading, embedding and placing an
uploaded study there would stall every other request; it keeps the same request (``?image=<id>`` with a JSON
``{}`` body, or a multipart ``file`` upload with an optional ``params`` form field) and answer.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse, Response
from starlette.background import BackgroundTask

from ss_stylegan.data.uploads import received_upload
from ss_stylegan.labelling.methods import DESCRIPTIONS, STRATEGIES
from ss_stylegan.labelling.validation import json_object

from lib.answers import learning
from lib.auth import ANNOTATE, RBAC, READ, TRAIN, User, labeller, owner_of
from lib.configs.settings import parse_train_request
from lib.errors import http_errors, redacted
from lib.handlers import Handlers
from lib.timing import HandlerTimer
from lib.train_control import TrainControl
from lib.uploads import bounded_route

_JSON_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body, parsed strictly (an empty body is ``{}``)."""
    with http_errors():
        return json_object(await request.body())


def build_router(handlers: Handlers, control: TrainControl) -> APIRouter:
    """Routes bound to ``handlers`` and ``control``."""
    router = APIRouter()

    _add_label_and_map_routes(router, handlers)
    _add_task_routes(router, handlers)
    _add_training_routes(router, handlers, control)
    return router


def _add_label_and_map_routes(router: APIRouter, handlers: Handlers) -> None:
    @router.put("/slicelabels/", tags=["SliceLabels"], summary="Store (or change) the class of one slice",
                openapi_extra=_JSON_BODY)
    def put_label(user: User = Depends(RBAC(ANNOTATE)), body: dict[str, Any] = Depends(json_body)) -> dict[str, Any]:
        with http_errors():
            return handlers.put_label(body, lambda claimed: labeller(user, claimed))

    @router.delete("/slicelabels/", tags=["SliceLabels"], summary="Remove the label of one slice")
    def delete_label(user: User = Depends(RBAC(ANNOTATE)), image: str = Query(...),
                     slice: str = Query(...)) -> dict[str, Any]:
        with http_errors():
            return handlers.delete_label(image, slice)

    @router.get("/slicelabels/", tags=["SliceLabels"], summary="List slice labels (flagged ones with why)")
    def list_labels(user: User = Depends(RBAC(READ)), image: str | None = None) -> dict[str, Any]:
        with http_errors():
            return redacted(handlers.labels(image))

    @router.get("/slicelabels/export.csv", tags=["SliceLabels"],
                summary="All slice labels as CSV; ?per=study: every study's findings (runs, positive) as CSV")
    def export_csv(user: User = Depends(RBAC(READ)), per: str = "slice") -> PlainTextResponse:
        with http_errors():
            text, name = handlers.export_csv(per)
        return PlainTextResponse(text, media_type="text/csv",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @router.get("/slicemap/", tags=["SliceLabels"], summary="Every embedded slice in the 2-D map")
    def slice_map(user: User = Depends(RBAC(READ))) -> dict[str, Any]:
        with http_errors():
            return handlers.map_points()

    @router.get("/slicemap/slice", tags=["SliceLabels"], summary="One slice as the model sees it (PNG)",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def slice_png(user: User = Depends(RBAC(READ)), image: str = Query(...), slice: str = Query(...)) -> Response:
        with http_errors():
            return Response(handlers.slice_png(image, slice), media_type="image/png")

    @router.get("/slicemap/picture.png", tags=["SliceLabels"], summary="The map by label and by prediction (PNG)",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def map_picture(user: User = Depends(RBAC(READ))) -> Response:
        with http_errors():
            return Response(handlers.map_picture(), media_type="image/png")

    @router.get("/slicemap/pictures/{name}", tags=["SliceLabels"],
                summary="The training's samples.png or reconstructions.png of the current map version",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def training_picture(user: User = Depends(RBAC(READ)), name: str = "") -> Response:
        with http_errors():
            return Response(handlers.training_picture(name), media_type="image/png")

    @router.get("/slicemap/series", tags=["SliceLabels"], summary="A DICOM series study as one zip file")
    def series_zip(user: User = Depends(RBAC(READ)), image: str = Query(...)) -> FileResponse:
        folder = tempfile.mkdtemp(prefix="ss_stylegan-series-")
        try:
            with http_errors():
                path = handlers.series_archive(image, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(path, media_type="application/zip", filename=path.name,
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


def _add_task_routes(router: APIRouter, handlers: Handlers) -> None:
    def classify(user: User = Depends(RBAC(READ)), image: str = "", params: str = Form("{}"),
                 file: UploadFile | None = File(None), output: str | None = None) -> dict[str, Any]:
        del output  # accepted for MONAI Label clients; the answer is always JSON
        with http_errors():
            json_object(params, "params")
            if file is not None:
                with received_upload(file.file, file.filename, handlers.settings.upload_limits) as (path, _):
                    return redacted(handlers.classify_file(path))
            return redacted(handlers.classify_image(image))

    router.add_api_route("/infer/classify", classify, methods=["POST"], tags=["Infer"],
                         summary="Class of every slice of a study and its findings (the server's classifier)",
                         route_class_override=bounded_route(lambda: handlers.settings.upload_limits.max_bytes))

    for name in STRATEGIES:
        router.add_api_route(
            f"/activelearning/{name}", _suggest_route(handlers, name), methods=["POST"],
            tags=["ActiveLearning"], summary=f"Next slice(s) to label: {DESCRIPTIONS[name]}", openapi_extra=_JSON_BODY,
        )

    @router.delete("/activelearning/pending", tags=["ActiveLearning"],
                   summary="Give back this client's suggestions not labelled yet")
    def release_suggestions(user: User = Depends(RBAC(ANNOTATE)), client_id: str = "") -> dict[str, Any]:
        with http_errors():
            return handlers.release_suggestions(client_id, owner=lambda client: owner_of(user, client))


def _add_training_routes(router: APIRouter, handlers: Handlers, control: TrainControl) -> None:
    @router.post("/train/ss_stylegan", tags=["Train"], summary="Train SS-StyleGAN and build the slice map",
                 openapi_extra=_JSON_BODY)
    def start_training(user: User = Depends(RBAC(TRAIN)), body: dict[str, Any] = Depends(json_body),
                       run_sync: bool = False) -> Any:
        with http_errors():
            return redacted(control.start("ss_stylegan", parse_train_request(body), run_sync))

    @router.get("/train/", tags=["Train"], summary="Training status (MONAI Label) plus SS-StyleGAN progress")
    def train_status(user: User = Depends(RBAC(READ)), all: bool = False, check_if_running: bool = False) -> Any:
        with http_errors():
            res = control.status(all, check_if_running)
            block = handlers.service.workspace.read_status().to_dict()
            return redacted({**res, "ss_stylegan": {**block, "learning": learning(block["progress"])}})

    @router.delete("/train/", tags=["Train"], summary="Stop the training (also one an earlier server started)")
    def stop_training(user: User = Depends(RBAC(TRAIN))) -> Any:
        with http_errors():
            return redacted(control.stop())


def _suggest_route(handlers: Handlers, strategy: str) -> Any:
    def suggest(response: Response, user: User = Depends(RBAC(ANNOTATE)),
                body: dict[str, Any] = Depends(json_body)) -> dict[str, Any]:
        with http_errors(), HandlerTimer(response):
            return handlers.suggest(strategy, body, owner=lambda client_id: owner_of(user, client_id))

    suggest.__name__ = f"suggest_{strategy}"
    return suggest
