"""The labelling service of one studies folder: slice map, labels, reservations, and the requests over them.

One :class:`LabellingService` lives in the server process. It only reads the slice map that training
published, so every request costs milliseconds. Studies added to the folder after training are embedded into
the existing map by a background thread (:class:`~ss_stylegan.labelling.live_map.LiveSliceMap`), never by
refitting the map; requests never wait for that.

:meth:`LabellingService.sync` is the one call that starts work in the background (a map update when the folder
changed); a server makes it once at the start of each request. Every other method either answers from the
current state or changes labels and reservations; none starts background work.

Answers are typed (:mod:`ss_stylegan.labelling.results`); errors are :mod:`ss_stylegan.labelling.errors`, the
library's own (:class:`~ss_stylegan.labelling.label_values.LabelError` and subclasses,
:class:`~ss_stylegan.labelling.validation.FieldError`, :class:`~ss_stylegan.data.readers.StudyReadError`, ...), which the
app maps to HTTP status codes in one table.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.config import derive_seed
from ss_stylegan.data.cache import Study, read_study_slices
from ss_stylegan.data.fingerprint import FingerprintCache
from ss_stylegan.data.preprocess import encode_png, model_ready_slice
from ss_stylegan.data.readers import StudyReadError, read_volume
from ss_stylegan.labelling.errors import (
    EmbeddingInProgressError,
    NotFoundError,
    NotReadyError,
)
from ss_stylegan.labelling.findings import (
    STUDY_CSV_FIELDS,
    positive_classes,
    study_error_row,
    study_findings,
    study_rows,
    summary_text,
)
from ss_stylegan.labelling.flags import LabelFlags
from ss_stylegan.labelling.indexes import MapIndexes
from ss_stylegan.labelling.label_store import SliceLabelStore
from ss_stylegan.labelling.label_values import (
    SliceOutOfRangeError,
    UnreadableImageError,
)
from ss_stylegan.labelling.live_map import LiveSliceMap
from ss_stylegan.labelling.methods import STRATEGIES, W_STRATEGIES, EmbeddingMethods, predict_in_w
from ss_stylegan.labelling.reservations import PendingSuggestions
from ss_stylegan.labelling.results import (
    LabellingConfig,
    MapPoints,
    ServiceStatus,
    SliceClass,
    StudyClassification,
    Suggestion,
    Suggestions,
    world_mm,
    world_values,
)
from ss_stylegan.labelling.studies import StudyIndex
from ss_stylegan.labelling.validation import FieldError, identifier, integer, text
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.selection.random_pick import random_free
from ss_stylegan.storage.faults import space_report
from ss_stylegan.workspace import Workspace

LABEL_TAG = "slice_class"
"""Where the labels live: ``<studies>/labels/slice_class`` (MONAI Label's label-tag layout)."""
MAX_CLIENT_ID_CHARS = 128


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A label record as answered to clients: without the study fingerprint it keeps for flagging."""
    return {k: v for k, v in record.items() if k != "study"}


class LabellingService:
    """Suggestions, labels and classification over one folder's slice map.

    Args:
        config: classes, slice settings, device, seeds and reservation limits.
        studies: the studies folder.
        workspace: its model state (published maps).
        training_running: callable telling whether a training runs now.

    Raises:
        OrphanedLabelsError: ``config.classes`` drops a class that still holds labels.
    """

    def __init__(self, config: LabellingConfig, studies: str | Path, workspace: Workspace,
                 training_running: Callable[[], bool]) -> None:
        self.config = config
        self.folder = Path(studies)
        self.workspace = workspace
        self.training_running = training_running
        self.studies = StudyIndex(self.folder)
        self.pending = PendingSuggestions(config.suggestion_ttl_s, config.suggestion_cap)
        self.fingerprints = FingerprintCache()
        self.maps = LiveSliceMap(self.studies, workspace, config.slice_cfg, config.device, training_running,
                                 self.fingerprints)
        self.flags = LabelFlags(self.studies, self.maps, self.fingerprints)
        # read-only until the server process opens it for writing (MONAI Label's subprocesses never write)
        self.labels = SliceLabelStore(self.folder / "labels" / LABEL_TAG, config.classes, self.flags.depth_of,
                                      writable=False)
        self.flags.labels = self.labels
        busy = self.pending.selection_lock.waiting   # FPS warm-ups give way to waiting requests
        self.indexes = MapIndexes(config.random_state, config.classes, busy)
        self.methods = EmbeddingMethods(len(config.classes), config.random_state, busy)
        self._random_calls = itertools.count()

    # -- the folder and the map -------------------------------------------------------------------------
    def sync(self) -> None:
        """Start background work when something changed, and return at once: an update of the map when the
        folder changed (new, deleted or changed studies), the suggestion index of a map that has none yet.
        Made once per request, before the request reads anything."""
        self.maps.maybe_refresh()
        slice_map = self.maps.current()
        if slice_map is not None and len(slice_map):
            self.indexes.prepare(slice_map)
            if self.uses_w():   # (3-6 s of background work per map version: not when nothing asks for it)
                self.methods.prepare(slice_map)

    def uses_w(self) -> bool:
        """Whether each map's state in W is built as soon as the map is there: the server's strategy or classifier
        is in W, or a request has asked for one (until then, the first such request starts the build)."""
        return self.config.strategy in W_STRATEGIES or self.config.classifier != "nn_map" or self.methods.used

    def slice_map(self) -> SliceMap | None:
        """The current map, or None before training (never waits for a background embedding)."""
        return self.maps.current()

    def study(self, image_id: str) -> Study | None:
        """The study (file or DICOM series folder) of an image id, or None when the folder has none."""
        return self.studies.study(image_id)

    def require_study(self, image_id: Any) -> Study:
        study = self.studies.study(identifier(image_id, "image"))
        if study is None:
            raise NotFoundError(f"image {image_id!r} is not in the datastore; list images with GET /datastore/?output=all")
        return study

    def require_map(self) -> SliceMap:
        slice_map = self.slice_map()
        if slice_map is None or len(slice_map) == 0:
            if self.training_running():
                raise NotReadyError("the model is still training; suggestions and classification start when it ends")
            raise NotReadyError("the model is not trained yet: start training with POST /train/ss_stylegan")
        return slice_map

    # -- labels -----------------------------------------------------------------------------------------
    def label_records(self, image_id: str | None = None) -> list[dict[str, Any]]:
        """Stored records (of one image), each with ``"flag"`` when it no longer fits its study."""
        if image_id is not None:
            identifier(image_id, "image")
        flags = self.flags.flags()
        out = []
        for record in self.labels.records(image_id):
            shown = public_record(record)
            reason = flags.get((record["image"], record["slice"]))
            out.append({**shown, "flag": reason} if reason else shown)
        return out

    def set_label(self, image_id: Any, slice_index: Any, class_name: Any, user: Any = "") -> dict[str, Any]:
        """Store the label of one slice, with the study's fingerprint now (see :class:`LabelFlags`), and free
        its reservation."""
        study = self.study(identifier(image_id, "image"))  # the store checks the rest
        fingerprint = self.fingerprints.fingerprint(study.path) if study is not None else None
        self.flags.relabelling(image_id)
        record = self.labels.set(image_id, slice_index, class_name, user, study=fingerprint)
        self.pending.release((image_id, slice_index))
        return public_record(record)

    def remove_label(self, image_id: str, slice_index: int) -> bool:
        self.flags.relabelling(image_id)
        return self.labels.remove(image_id, slice_index)

    # -- suggestions ------------------------------------------------------------------------------------
    def suggest(self, strategy: str, count: Any = 1, client_id: Any = "", owner: str | None = None) -> Suggestions:
        """The next slice(s) to label, reserved for the client, by ``strategy`` (:data:`STRATEGIES`): in W
        (``typiclust``, ``probcover``, ``fps_w``: labelled and reserved slices count as chosen), farthest from every
        labelled or reserved slice in the map (``fps``), or random. Until the map's state in W is ready (built in
        the background, seconds), a W strategy answers with ``fps`` and says so.

        Args:
            strategy: one of :data:`STRATEGIES`.
            count: how many (1 .. ``suggestion_cap``).
            client_id: who asks (reservations are per client; default ``anonymous``).
            owner: whose cap the reservations count against (the signed-in user); the client by default.

        Raises:
            NotFoundError: unknown strategy. FieldError: a bad ``count`` or ``client_id``.
            ReservationLimitError: the owner holds too many reservations under other client ids.
            NotReadyError: no map yet.
        """
        if strategy not in STRATEGIES:
            raise NotFoundError(f"unknown strategy {strategy!r}; valid strategies are {list(STRATEGIES)}")
        cap = self.config.suggestion_cap
        if isinstance(count, int) and not isinstance(count, bool) and count > cap:
            raise FieldError("count", f"at most {cap} suggestions may be reserved at once (setting "
                                      f"suggestion_cap), got {count}")
        count = integer(count, "count", minimum=1, maximum=cap)
        client = text(client_id or "", "client_id", MAX_CLIENT_ID_CHARS) or "anonymous"
        self.pending.check_count(count, client, owner)
        slice_map = self.require_map()
        row_of = self.indexes.rows(slice_map)
        # the map's FPS index, kept between calls (only what changed since the last call is applied); a new
        # map's is built, or its background build waited for, before taking the lock every annotator needs
        whole = self.methods.get(slice_map) if strategy in W_STRATEGIES else None
        used, why = strategy, ""
        if strategy in W_STRATEGIES and whole is None:
            used = "fps"
            why = f"{strategy} in W is being prepared for this map ({self.methods.status(slice_map)}); meanwhile: "
        index = self.indexes.suggestions(slice_map) if used == "fps" else None
        with self.pending.selection_lock:  # choosing and reserving are one step for concurrent annotators
            removed = self.maps.removed_rows(slice_map)
            gone = None
            if len(removed):  # (no map-sized mask per request while no study has left the folder)
                gone = np.zeros(len(slice_map), dtype=bool)
                gone[removed] = True
            # slices of studies that left the folder are unavailable, but neither labelled nor reserved:
            # they must not act as FPS centres (that would push their neighbours to the end)
            labelled = [r for r in (row_of.get(k) for k in self.flags.usable())
                        if r is not None and (gone is None or not gone[r])]
            reserved = [r for r in (row_of.get(k) for k in self.pending.reserved(exclude_client=client))
                        if r is not None and (gone is None or not gone[r])]
            if whole is not None:
                picks = whole.select(strategy, labelled, reserved, count, removed)
            elif index is not None:
                picks = index.select(labelled=labelled, pending=reserved, count=count, exclude=removed)
            else:  # a new draw per call, repeatable from the random state
                picks = random_free(slice_map.xy, np.asarray([*labelled, *reserved], dtype=np.int64),
                                    np.unique(removed) if len(removed) else removed, count,
                                    derive_seed(self.config.random_state, next(self._random_calls)))
            keys = [(str(slice_map.image_ids[p.index]), int(slice_map.slices[p.index])) for p in picks]
            self.pending.reserve(client, keys, owner)
        message = ""
        if not picks:
            message = ("every embedded slice is labelled" if len(labelled) >= len(slice_map) - len(removed)
                       else "every unlabelled slice is currently suggested to another annotator; try again later")
        return Suggestions(
            picks=[Suggestion(image=key[0], slice=key[1],
                              position=tuple(float(v) for v in slice_map.xy[p.index]),  # type: ignore[arg-type]
                              world=world_mm(slice_map.positions[p.index]),
                              distance=None if p.distance is None else float(p.distance), reason=why + p.reason,
                              strategy=used) for p, key in zip(picks, keys)],
            message=message, n_labelled=len(labelled))

    def release_suggestions(self, client_id: Any = "", owner: str | None = None) -> list[tuple[str, int]]:
        """Give back the slices suggested to ``client_id`` and not labelled (a client closing, or a user
        stopping for the day), so other annotators are offered them now rather than when they expire.

        Args:
            client_id: the client id the suggestions were asked with (default ``anonymous``).
            owner: the owner they were reserved under (the signed-in user); the client by default. Only
                that owner's reservations are given back, so one user cannot free another's.

        Returns:
            The ``(image, slice)`` keys given back (empty when the client held none).

        Raises:
            FieldError: a bad ``client_id``.
        """
        client = text(client_id or "", "client_id", MAX_CLIENT_ID_CHARS) or "anonymous"
        return self.pending.release_client(client, owner)

    # -- classification ---------------------------------------------------------------------------------
    def _predict(self, slice_map: SliceMap, xy: np.ndarray, rows: np.ndarray | None = None,
                 w: np.ndarray | None = None) -> tuple[Any, np.ndarray, str]:
        """The configured classifier's answer for map ``rows`` (or placed slices ``xy`` with W ``w``): prediction,
        labelled classes and the classifier that answered (1-NN in the map while the state in W is built)."""
        inputs = (self.labels.version, self.labels.labelled_keys, self.flags.flags(), self.maps.removed_rows(slice_map))
        method = self.config.classifier
        whole = self.methods.get(slice_map) if method != "nn_map" else None
        if whole is None:
            return (*self.indexes.predict(slice_map, xy, *inputs), "nn_map")
        labels = self.indexes.labelled_rows(slice_map, *inputs)
        return (*predict_in_w(self.methods, whole, method, labels, self.config.classes, rows, w), method)

    def _classify(self, slice_map: SliceMap, image: str | None, xy: np.ndarray, slices: np.ndarray,
                  positions: np.ndarray, n_slices: int | None, rows: np.ndarray | None = None,
                  w: np.ndarray | None = None) -> StudyClassification:
        pred, classes, method = self._predict(slice_map, xy, rows, w)
        summary = {c: 0 for c in self.config.classes}
        out = []
        for i in range(len(xy)):
            row = int(pred.neighbour[i])
            label = str(pred.labels[i])
            summary[label] = summary.get(label, 0) + 1
            out.append(SliceClass(
                slice=int(slices[i]), label=label, score=float(pred.score[i]),
                scores={str(c): float(s) for c, s in zip(classes, pred.scores[i])},
                neighbour_image=str(slice_map.image_ids[row]), neighbour_slice=int(slice_map.slices[row]),
                distance=float(pred.distance[i]), position=(float(xy[i, 0]), float(xy[i, 1])),
                world=world_mm(positions[i]),
            ))
        rule = self.config.rule()
        per_class = {str(c): pred.scores[:, i] for i, c in enumerate(classes)}
        findings = study_findings(slices, [o.label for o in out], per_class, self.config.classes, rule,
                                  z=world_values(positions[:, 2]) if len(positions) else None)
        positive = positive_classes(findings)
        volume_class = max(positive, key=lambda c: summary.get(c, 0)) if positive else rule.background
        warning = None
        if len(classes) < 2:
            warning = (f"only class {classes[0]!r} is labelled, so every slice gets it; label slices of "
                       "the other classes for a meaningful classification")
        if method != self.config.classifier:
            warning = (f"{self.config.classifier} in W is being prepared for this map; 1-NN in the map answered"
                       + (f"; {warning}" if warning else ""))
        return StudyClassification(image=image, model_version=slice_map.model_version, slices=out, summary=summary,
                                   volume_class=volume_class, n_slices=n_slices,
                                   labelled_classes=[str(c) for c in classes], warning=warning, findings=findings,
                                   positive=positive, study_summary=summary_text(findings, rule), rule=rule,
                                   classifier=method, label_version=self.labels.version)

    def classify_image(self, image_id: Any) -> StudyClassification:
        """Classify every embedded slice of a study in the folder (a file or DICOM series folder). Never waits
        for a background embedding.

        Raises:
            NotFoundError: no study with this id in the folder.
            EmbeddingInProgressError: the study was added or changed after the map was made and is being
                embedded now.
            NotReadyError: no map, no label, or no usable slice in the study.
            UnreadableImageError: the study cannot be read.
        """
        self.require_study(image_id)
        slice_map = self.require_map()
        if self.maps.is_stale(image_id, slice_map):
            raise EmbeddingInProgressError(f"image {image_id!r} changed on disk since it was embedded; it is "
                                           "being read again, retry in a few seconds")
        rows = slice_map.rows_of(image_id)
        if len(rows) == 0:
            raise self._why_not_embedded(image_id, slice_map)
        return self._classify(slice_map, image_id, slice_map.xy[rows], slice_map.slices[rows],
                              slice_map.positions[rows], slice_map.depths.get(image_id), rows=rows)

    def _why_not_embedded(self, image_id: str, slice_map: SliceMap) -> Exception:
        error = slice_map.errors.get(image_id)
        if error:
            return UnreadableImageError(f"image {image_id!r} could not be used: {error}")
        if image_id in slice_map.depths:
            return NotReadyError(
                f"image {image_id!r} has no embedded slice: no slice has enough foreground "
                "(a blank or constant image?); check the file or the intensity window (--conf window)")
        # added after the map was made
        if image_id not in self.maps.embedding and image_id in self.maps.failed:
            return NotReadyError(f"image {image_id!r} is not in the map: {self.maps.failed[image_id]}")
        if image_id not in self.maps.embedding and self.training_running():
            return NotReadyError(f"image {image_id!r} was added during training; it is embedded when training ends")
        return EmbeddingInProgressError(f"new studies are being embedded, retry in a few seconds (image {image_id!r})")

    def classify_file(self, path: str | Path) -> StudyClassification:
        """Classify a study that is not in the folder: read, embed, place into the map, 1-NN.

        Raises:
            NotReadyError: no map or no label yet.
            StudyReadError: the file cannot be read or has no usable slice.
            WorkspaceError: the published model cannot place slices into the map (train again).
        """
        slice_map = self.require_map()
        self.indexes.require_labels(slice_map, self.labels.version, self.labels.labelled_keys, self.flags.flags(),
                                    self.maps.removed_rows(slice_map))  # no label yet: refuse before reading
        study = read_study_slices(path, slice_map.read_config(self.config.slice_cfg))
        if len(study.images) == 0:
            raise StudyReadError(path, "no slice has enough foreground to classify",
                                 "check the intensity window (--conf window) or the file")
        w, xy = self.maps.embedder.embed_and_place(study.images, slice_map)
        return self._classify(slice_map, None, xy, study.slices, study.positions, study.n_slices, w=w)

    def studies_csv(self) -> str:
        """Every study of the map classified: one CSV row per study and class other than the background, with
        the fields of the study answer's ``findings`` (runs as ``first-last`` joined by ``;``). A study that
        cannot be classified now gets one row with ``error``.

        Raises:
            NotReadyError: no map or no label yet.
        """
        slice_map = self.require_map()
        self.indexes.require_labels(slice_map, self.labels.version, self.labels.labelled_keys, self.flags.flags(),
                                    self.maps.removed_rows(slice_map))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(STUDY_CSV_FIELDS)
        removed = set(slice_map.image_ids[self.maps.removed_rows(slice_map)].tolist())
        for image_id in sorted(slice_map.image_set() - removed):
            try:
                result = self.classify_image(image_id)
            except (NotReadyError, UnreadableImageError, NotFoundError) as err:
                writer.writerow(study_error_row(image_id, str(err)))
                continue
            writer.writerows(study_rows(image_id, result))
        return buf.getvalue()

    def points(self) -> MapPoints:
        """Every embedded slice of a study in the folder, with its map position, world position, label and
        (when labels exist) prediction; slices of deleted or changed studies are left out."""
        slice_map = self.require_map()
        keep = np.ones(len(slice_map), dtype=bool)
        keep[self.maps.removed_rows(slice_map)] = False
        keys = self.flags.usable()
        image_ids, slices = slice_map.image_ids[keep].tolist(), slice_map.slices[keep].tolist()
        label = [keys.get((img, int(s))) for img, s in zip(image_ids, slices)]
        prediction: list[str | None] = [None] * len(image_ids)
        score: list[float | None] = [None] * len(image_ids)
        method = None
        try:
            pred, _, method = self._predict(slice_map, slice_map.xy[keep], rows=np.flatnonzero(keep))
            prediction = [str(c) for c in pred.labels]
            score = [float(s) for s in pred.score]
        except NotReadyError:
            pass
        return MapPoints(model_version=slice_map.model_version, image=image_ids, slice=slices,
                         x=slice_map.xy[keep, 0].astype(float).tolist(), y=slice_map.xy[keep, 1].astype(float).tolist(),
                         world=world_values(slice_map.positions[keep]).tolist(),
                         label=label, prediction=prediction,
                         score=score, classifier=method, label_version=self.labels.version)

    # -- study files ------------------------------------------------------------------------------------
    def slice_png(self, image_id: Any, slice_index: int) -> bytes:
        """One slice of a study as the model sees it (canonical, windowed, resized), as PNG.

        Raises:
            NotFoundError: no such study. NotReadyError: before training (the model-ready image is the
            trained map's input). SliceOutOfRangeError: no such slice. UnreadableImageError: unreadable study.
        """
        study = self.require_study(image_id)
        slice_map = self.require_map()
        try:
            volume = read_volume(study.path)
        except StudyReadError as err:
            raise UnreadableImageError(str(err)) from err
        try:
            image = model_ready_slice(volume, slice_index, slice_map.read_config(self.config.slice_cfg))
        except IndexError as err:
            raise SliceOutOfRangeError(f"image {image_id!r}: {err}") from err
        return encode_png(image)

    # -- status -----------------------------------------------------------------------------------------
    def status(self) -> ServiceStatus:
        """Where the service stands: trained or not, the live map, labels, problems with studies."""
        status = self.workspace.read_status()
        slice_map = self.slice_map()
        if self.training_running():
            state, message = "training", status.message or "training"
        elif slice_map is not None and len(slice_map):
            state, message = "ready", f"{len(slice_map)} slices embedded with model {slice_map.model_version}"
            if status.state == "failed":
                message += f"; the last training failed: {status.message}"
            elif status.progress.get("phase") == "stopped":
                message += f"; the last {status.message}"
        elif status.state == "failed":
            state, message = "failed", status.message
        elif status.progress.get("phase") == "stopped":
            state, message = "untrained", status.message
        elif status.state == "ready" or self.workspace.problems:
            state = "untrained"
            why = "the published versions are damaged (see problems)" if self.workspace.problems \
                else "the published map is missing from the workspace"
            message = (f"no readable slice map: {why}; retrain with POST /train/ss_stylegan, which resumes from "
                       "the last checkpoint")
        else:
            state, message = "untrained", status.message or "not trained yet: POST /train/ss_stylegan"
        if self.maps.problem:
            message += f"; the published map could not be loaded ({self.maps.problem}), the previous one is in use"
        problems = list(self.workspace.problems) + ([self.maps.problem] if self.maps.problem else [])
        problems += [f"slice labels: skipped {line}" for line in self.labels.skipped]
        problems += [f"{what} is failing: {err}" for what, err in self.labels.faults.failing().items()]
        if problems and state == "ready":
            message += f"; {len(problems)} problem(s) found (see problems)"
        errors = dict(slice_map.errors) if slice_map is not None else {}
        errors.update(self.maps.failed)
        live = None
        if slice_map is not None:
            live = {"version": slice_map.version.name if slice_map.version is not None else None,
                    "model_version": slice_map.model_version, "training": dict(slice_map.training)}
        return ServiceStatus(
            state=state, message=message, n_slices=len(slice_map) if slice_map is not None else 0,
            n_images_embedded=len(slice_map.image_set()) if slice_map is not None else 0,
            n_labelled=len(self.labels), flagged=[r for r in self.label_records() if "flag" in r],
            changed=sorted(self.maps.changed),
            model_version=slice_map.model_version if slice_map is not None else None,
            map=live, progress=status.progress, errors=errors, embedding=sorted(self.maps.embedding),
            ignored_files=self.studies.ignored_files(), problems=problems, storage=self.storage(),
        )

    def storage(self) -> dict[str, Any]:
        """Free space of the studies folder, the labels folder and the workspace (each may be a disk of its own),
        each with a warning when low (labels, uploads and maps need room to be stored)."""
        return space_report({"studies": self.folder, "labels": self.labels.folder, "workspace": self.workspace.root})
