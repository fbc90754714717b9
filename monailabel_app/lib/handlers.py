"""One handler per endpoint of the app: the HTTP routes (:mod:`lib.routes`) and the task objects MONAI Label
requires (the ``fps``/``random`` strategies, the ``classify`` infer task, ``/info/``) all call these.

A handler takes the request's values, brings the live map in step with the studies folder (one
``service.sync()`` per request: the only place background work starts), calls the labelling service, and
shapes its answer (:mod:`lib.answers`). Errors are the library's; the routes map them to status codes in one
table (:mod:`lib.errors`), the task objects let MONAI Label report them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ss_stylegan.labelling.errors import NotFoundError
from ss_stylegan.labelling.label_values import MAX_USER_CHARS
from ss_stylegan.labelling.service import MAX_CLIENT_ID_CHARS, LabellingService
from ss_stylegan.labelling.validation import FieldError, identifier, integer_text, only_keys, text
from ss_stylegan.labelling.viewer import SliceView, SliceViewer, series_archive
from ss_stylegan.maps.pictures import picture_title, points_picture, training_picture

from lib import answers
from lib.configs.settings import AppSettings
from lib.label_counts import LabelCountMirror

LABEL_FIELDS = ("image", "slice", "class", "user")
SUGGEST_FIELDS = ("count", "client_id")


def required(body: dict[str, Any], *fields: str) -> None:
    for field in fields:
        if field not in body:
            raise FieldError(field, "is required")


class Handlers:
    """The app's requests over one labelling service.

    Args:
        service: the labelling service of the studies folder.
        settings: the server's settings (shown in ``/info/``).
        mirror: copies label counts into MONAI Label's datastore after each label change.
    """

    def __init__(self, service: LabellingService, settings: AppSettings, mirror: LabelCountMirror) -> None:
        self.service = service
        self.settings = settings
        self.mirror = mirror
        self._picture: tuple[Any, bytes] | None = None   # (map version, label version, changed studies) -> PNG
        self.viewer = SliceViewer()

    def info(self) -> dict[str, Any]:
        """``GET /info/``'s ``ss_stylegan`` block."""
        self.service.sync()
        block = answers.info_block(self.service.status(), self.settings,
                                   self.service.methods.status(self.service.slice_map()))
        block["problems"] += [f"{what} is failing: {err}" for what, err in self.mirror.faults.failing().items()]
        return block

    def suggest(self, strategy: str, body: dict[str, Any], owner: Callable[[str], str] | None = None
                ) -> dict[str, Any]:
        """``POST /activelearning/{strategy}`` with ``{"count": n, "client_id": "..."}`` (both optional);
        ``owner(client id)`` is whose reservation cap the picks count against (see lib.auth)."""
        only_keys(body, SUGGEST_FIELDS)
        client_id = text(body.get("client_id") or "", "client_id", MAX_CLIENT_ID_CHARS) or "anonymous"
        self.service.sync()
        return answers.suggestions(self.service.suggest(strategy, count=body.get("count", 1), client_id=client_id,
                                                        owner=owner(client_id) if owner else None))

    def release_suggestions(self, client_id: str, owner: Callable[[str], str] | None = None) -> dict[str, Any]:
        """``DELETE /activelearning/pending?client_id=``: give back the client's suggestions not yet labelled;
        ``owner(client id)`` is whose reservations they must be (see lib.auth)."""
        client = text(client_id or "", "client_id", MAX_CLIENT_ID_CHARS) or "anonymous"
        keys = self.service.release_suggestions(client, owner=owner(client) if owner else None)
        return answers.released(client, keys)

    def put_label(self, body: dict[str, Any], labeller: Callable[[str], str]) -> dict[str, Any]:
        """``PUT /slicelabels/`` with ``{"image", "slice", "class"}`` and an optional ``user``;
        ``labeller(claimed user)`` is who is recorded (a signed-in user's name wins; see lib.auth)."""
        only_keys(body, LABEL_FIELDS)
        required(body, "image", "slice", "class")
        user = labeller(text(body.get("user", ""), "user", MAX_USER_CHARS))
        self.service.sync()
        record = self.service.set_label(body["image"], body["slice"], body["class"], user)
        self.mirror.changed(record["image"])
        return record

    def delete_label(self, image: str, slice_text: str) -> dict[str, Any]:
        """``DELETE /slicelabels/?image=&slice=``."""
        identifier(image, "image")
        index = integer_text(slice_text, "slice", minimum=0)
        self.service.sync()
        if not self.service.remove_label(image, index):
            raise NotFoundError(f"slice {index} of image {image!r} has no label")
        self.mirror.changed(image)
        return {"removed": {"image": image, "slice": index}}

    def labels(self, image: str | None) -> dict[str, Any]:
        """``GET /slicelabels/[?image=]``: the records, each flagged one with why."""
        self.service.sync()
        return {"labels": self.service.label_records(image)}

    def export_csv(self, per: str) -> tuple[str, str]:
        """``GET /slicelabels/export.csv[?per=slice|study]``: ``(CSV text, file name)``."""
        if per == "slice":
            return self.service.labels.to_csv(), "slice_labels.csv"
        if per != "study":
            raise FieldError("per", f"must be 'slice' (every label) or 'study' (every study's findings), got {per!r}")
        self.service.sync()
        return self.service.studies_csv(), "study_findings.csv"

    def map_points(self) -> dict[str, Any]:
        """``GET /slicemap/``."""
        self.service.sync()
        return answers.map_points(self.service.points())

    def slice_png(self, image: str, slice_text: str) -> bytes:
        """``GET /slicemap/slice?image=&slice=``."""
        return self.service.slice_png(image, integer_text(slice_text, "slice"))

    def slice_view(self, image: str, slice_text: str, window: str, size_text: str | None) -> SliceView:
        """``GET /slicemap/view?image=&slice=[&window=][&size=]``: a slice windowed for reading."""
        study = self.service.require_study(image)
        size = integer_text(size_text, "size") if size_text else None
        return self.viewer.view(study, integer_text(slice_text, "slice", minimum=0), window, size)

    def thumbnail(self, image: str, slice_text: str) -> bytes:
        """``GET /slicemap/thumbnail?image=&slice=``: the slice as the model saw it, small."""
        study = self.service.require_study(image)
        slice_map = self.service.slice_map()
        cfg = slice_map.read_config(self.settings.slice_cfg) if slice_map is not None else self.settings.slice_cfg
        return self.viewer.thumbnail(study, integer_text(slice_text, "slice", minimum=0), cfg,
                                     self.service.workspace.cache_dir)

    def map_picture(self) -> bytes:
        """``GET /slicemap/picture.png``: the current map by label and by prediction (kept until either changes)."""
        slice_map = self.service.require_map()
        name = slice_map.version.name if slice_map.version is not None else "new"
        key = (name, self.service.labels.version, self.service.maps.changed)
        if self._picture is None or self._picture[0] != key:
            title = picture_title(name, slice_map.model_version, slice_map.training)
            self._picture = (key, points_picture(self.service.points(), self.settings.classes, title))
        return self._picture[1]

    def training_picture(self, name: str) -> bytes:
        """``GET /slicemap/pictures/{name}``: the current version's training pictures."""
        slice_map = self.service.require_map()
        return training_picture(slice_map.version, name)

    def series_archive(self, image: str, folder: str) -> Path:
        """``GET /slicemap/series?image=``: the zip written into ``folder``."""
        return series_archive(self.service.require_study(image), folder)

    def classify_image(self, image: str) -> dict[str, Any]:
        """``POST /infer/classify?image=<datastore id>`` (and MONAI Label's batch infer)."""
        if not image:
            raise NotFoundError("unknown image: give ?image=<datastore image id> (see GET /datastore/) or upload a file")
        self.service.sync()
        return answers.classification(self.service.classify_image(image))

    def classify_file(self, path: str | Path) -> dict[str, Any]:
        """``POST /infer/classify`` with an uploaded study (already received and checked)."""
        self.service.sync()
        return answers.classification(self.service.classify_file(path))
