"""HTTP routes the app adds to MONAI Label's FastAPI server: ``/slicelabels/``, ``/slicemap/`` (with one
slice's model-ready PNG at ``/slicemap/slice`` and a DICOM series study as a zip at ``/slicemap/series``),
and thin wrappers of ``POST /activelearning/{fps,random}``, ``POST /infer/classify``,
``POST /train/ss_stylegan`` and ``GET /train/``.

Handlers are plain ``def`` (FastAPI runs them in its thread pool, so they never block the event loop) and
only translate HTTP to :class:`~lib.service.SliceLabelService` calls. The active-learning wrapper exists
because MONAI Label's own endpoint turns an answer without ``id`` into a 500; ours answers 200
``{"done": true, "message": ...}`` when nothing is left, and 409 before training. The classify wrapper
exists because MONAI Label's infer endpoint is ``async def``: reading, embedding and placing an uploaded
study there would stall every other request; it keeps the same request (``?image=<id>`` with a JSON
``{}`` body, or a multipart ``file`` upload with an optional ``params`` form field) and answer.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, File, Form, HTTPException, Query, UploadFile
from fastapi.responses import FileResponse, PlainTextResponse, Response
from monailabel.endpoints import train as train_endpoint
from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import tasks as async_tasks
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from ss_stylegan.data.readers import StudyReadError
from ss_stylegan.labels import SliceOutOfRangeError, UnknownClassError, UnknownImageError, UnreadableImageError
from ss_stylegan.workspace import WorkspaceError

from lib.service import STRATEGIES, NotFoundError, NotReadyError, SliceLabelService


class LabelBody(BaseModel):
    image: str
    slice: int
    class_: str = Field(alias="class")
    user: str = ""


@contextmanager
def classify_errors() -> Iterator[None]:
    """Classification (and slice image) errors as HTTP answers: 404 unknown image, 409 not ready (no map,
    no label, being embedded, or a published model that cannot place new slices), 422 a study that cannot
    be read or a slice it does not have."""
    try:
        yield
    except NotFoundError as err:
        raise HTTPException(status_code=404, detail=str(err)) from err
    except (NotReadyError, WorkspaceError) as err:
        raise HTTPException(status_code=409, detail=str(err)) from err
    except (StudyReadError, UnreadableImageError, SliceOutOfRangeError) as err:
        raise HTTPException(status_code=422, detail=str(err)) from err


def upload_suffix(filename: str | None) -> str:
    """The file type suffixes of an uploaded file's name (``.nii.gz``), safe for a temporary file name."""
    suffixes = "".join(pathlib.Path(filename or "").suffixes[-2:])
    return re.sub(r"[^A-Za-z0-9.]", "", suffixes) or ".nii.gz"


def build_router(service: SliceLabelService) -> APIRouter:
    """Routes bound to ``service``."""
    router = APIRouter()
    train_lock = threading.Lock()

    @router.put("/slicelabels/", tags=["SliceLabels"], summary="Store (or change) the class of one slice")
    def put_label(body: LabelBody) -> dict[str, Any]:
        try:
            return service.set_label(body.image, body.slice, body.class_, body.user)
        except UnknownImageError as err:
            raise HTTPException(status_code=404, detail=str(err)) from err
        except (UnknownClassError, SliceOutOfRangeError, UnreadableImageError) as err:
            raise HTTPException(status_code=422, detail=str(err)) from err

    @router.delete("/slicelabels/", tags=["SliceLabels"], summary="Remove the label of one slice")
    def delete_label(image: str = Query(...), slice: int = Query(...)) -> dict[str, Any]:
        if not service.remove_label(image, slice):
            raise HTTPException(status_code=404, detail=f"slice {slice} of image {image!r} has no label")
        return {"removed": {"image": image, "slice": slice}}

    @router.get("/slicelabels/", tags=["SliceLabels"], summary="List slice labels")
    def list_labels(image: str | None = None) -> dict[str, Any]:
        return {"labels": service.labels.records(image)}

    @router.get("/slicelabels/export.csv", tags=["SliceLabels"], summary="All slice labels as CSV")
    def export_csv() -> PlainTextResponse:
        return PlainTextResponse(
            service.labels.to_csv(), media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="slice_labels.csv"'},
        )

    @router.get("/slicemap/", tags=["SliceLabels"], summary="Every embedded slice in the 2-D map")
    def slice_map() -> dict[str, Any]:
        try:
            return service.points()
        except NotReadyError as err:
            raise HTTPException(status_code=409, detail=str(err)) from err

    @router.get("/slicemap/slice", tags=["SliceLabels"], summary="One slice as the model sees it (PNG)",
                response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def slice_png(image: str = Query(...), slice: int = Query(...)) -> Response:
        with classify_errors():
            return Response(service.slice_png(image, slice), media_type="image/png")

    @router.get("/slicemap/series", tags=["SliceLabels"], summary="A DICOM series study as one zip file")
    def series_zip(image: str = Query(...)) -> FileResponse:
        folder = tempfile.mkdtemp(prefix="ss_stylegan-series-")
        try:
            with classify_errors():
                path = service.series_archive(image, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(path, media_type="application/zip", filename=path.name,
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    @router.post("/infer/classify", tags=["Infer"], summary="Class of every slice of a study (1-NN in the map)")
    def classify(
        image: str = "",
        params: str = Form("{}"),
        file: UploadFile | None = File(None),
        output: str | None = None,
    ) -> dict[str, Any]:
        del params, output  # accepted for MONAI Label clients; the answer is always JSON
        with classify_errors():
            if file is not None:
                with tempfile.TemporaryDirectory(prefix="ss_stylegan-upload-") as folder:
                    path = pathlib.Path(folder) / f"upload{upload_suffix(file.filename)}"
                    with open(path, "wb") as fh:
                        shutil.copyfileobj(file.file, fh)
                    return service.classify_file(path)
            if not image:
                raise NotFoundError(
                    "unknown image: give ?image=<datastore image id> (see GET /datastore/) or upload a file")
            return service.classify_image(image)

    for name in STRATEGIES:
        router.add_api_route(
            f"/activelearning/{name}", _suggest_handler(service, name), methods=["POST"],
            tags=["ActiveLearning"], summary=f"Next slice(s) to label ({name})",
        )

    @router.post("/train/ss_stylegan", tags=["Train"], summary="Train SS-StyleGAN and build the slice map")
    def start_training(params: dict[str, Any] | None = None, run_sync: bool = False) -> Any:
        # MONAI Label checks for a running training only once its subprocess exists, so two quick
        # requests could both be queued; here a submitted or running task refuses the second one.
        with train_lock:
            busy = [t for t in async_tasks("train") if t.get("status") in ("SUBMITTED", "RUNNING")]
            if busy:
                raise HTTPException(
                    status_code=409,
                    detail=f"training is already running (task {busy[0]['id']}, started {busy[0]['start_ts']}); "
                    "wait for it (GET /train/) or stop it (DELETE /train/)",
                )
            return train_endpoint.run_model("ss_stylegan", params, run_sync, False)

    @router.get("/train/", tags=["Train"], summary="Training status (MONAI Label) plus SS-StyleGAN progress")
    def train_status_route(all: bool = False, check_if_running: bool = False) -> Any:
        res, detail = AsyncTask.status("train", all, check_if_running)
        if res is None:
            if check_if_running:
                raise HTTPException(status_code=404, detail=detail)
            res = {"status": "NONE", "detail": detail}
        progress = service.workspace.read_status().to_dict()
        if isinstance(res, dict):
            return {**res, "ss_stylegan": progress}
        return {"tasks": res, "ss_stylegan": progress}

    return router


def _suggest_handler(service: SliceLabelService, strategy: str) -> Any:
    def suggest(params: dict[str, Any] | None = None) -> dict[str, Any]:
        params = params or {}
        try:
            return service.suggest(strategy, count=params.get("count", 1), client_id=str(params.get("client_id") or ""))
        except NotReadyError as err:
            raise HTTPException(status_code=409, detail=str(err)) from err
        except ValueError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err

    suggest.__name__ = f"suggest_{strategy}"
    return suggest


def install(app: FastAPI, router: APIRouter) -> None:
    """Add ``router`` to ``app`` ahead of MONAI Label's routes, so its paths take precedence."""
    before = len(app.router.routes)
    app.include_router(router)
    added = app.router.routes[before:]
    del app.router.routes[before:]
    app.router.routes[0:0] = added
    app.openapi_schema = None
