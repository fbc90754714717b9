"""The server-side state of one datastore: slice map, labels, reservations, and the requests over them.

One :class:`SliceLabelService` lives in the server process (created by the app class). Request handlers
(strategies, the classifier, the ``/slicelabels/`` routes, ``/info/``) call it; it only reads the slice
map that training wrote, so every call costs milliseconds. Studies added to the datastore after training
are embedded into the existing map by a background thread (:meth:`SliceLabelService.maybe_refresh`),
never by refitting the map.

Request handlers never wait for that embedding (see :mod:`lib.live_map`).

Suggestions and classification keep one index each per published map, changed instead of rebuilt when
labels and reservations change: farthest point sampling keeps every slice's distance to its nearest
labelled or reserved slice (:class:`~ss_stylegan.fps_index.SuggestionIndex`), and 1-NN classification
keeps a k-d tree per class (:class:`~ss_stylegan.classification.NearestLabelIndex`). Their answers equal
those of the stateless selector and classifier; a new map (a training, or studies embedded into it)
gets new indexes on first use.

Labels that no longer fit their study (deleted, unreadable, fewer slices, changed file) are *flagged*
(:func:`ss_stylegan.labels.flag_of`): listed with the reason in ``/slicelabels/`` and ``/info/``, and left
out of suggestions and classification, never moved or dropped.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ss_stylegan.classification import NearestLabelIndex, Prediction
from ss_stylegan.data.cache import Study, read_study_slices
from ss_stylegan.data.fingerprint import Fingerprint, FingerprintCache, Stamp
from ss_stylegan.data.fingerprint import stamp as study_stamp
from ss_stylegan.data.preprocess import encode_png, model_ready_slice
from ss_stylegan.data.readers import StudyReadError, looks_like_dicom_file, read_volume
from ss_stylegan.labels import SliceLabelStore, SliceOutOfRangeError, StudyState, UnreadableImageError, flag_of
from ss_stylegan.fps_index import SuggestionIndex
from ss_stylegan.selection import RandomSelector, derive_seed
from ss_stylegan.validation import FieldError, identifier, integer, text
from ss_stylegan.workspace import PendingSuggestions, SliceMap, Workspace

from lib.configs.settings import AppSettings
from lib.errors import EmbeddingInProgressError, NotFoundError, NotReadyError
from lib.live_map import LiveSliceMap

log = logging.getLogger(__name__)

LABEL_TAG = "slice_class"
STRATEGIES = ("fps", "random")
FLAGS_TTL_S = 1.0  # flags are recomputed when labels or the map change, else at most this often
MAX_CLIENT_ID_CHARS = 128


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A label record as answered to clients: without the study fingerprint it keeps for flagging."""
    return {k: v for k, v in record.items() if k != "study"}


def settle_garbage_collector() -> None:
    """Exempt every object alive now (the server's code, MONAI Label's, the loaded map and indexes: over
    half a million objects) from the garbage collector's full collections.

    A full collection walks every tracked object; in the server that took 0.3-0.6 s, and the thread that ran
    it (any request, or the label-count mirror) stalled every other request meanwhile: 16 annotators at a
    million slices saw a 95th percentile of 0.6 s. Frozen objects are still freed by reference counting;
    only reference cycles among them are never collected, which long-lived server state does not form.
    """
    gc.freeze()


class MapRows:
    """``(image id, slice) -> row`` of one slice map, made per image on first use.

    ``SliceMap.row_lookup`` would hold one Python tuple and dict entry per slice: at a million slices every
    full garbage collection of the server walks them, and the measured pauses (0.3 s) stalled concurrent
    requests. The server only looks up labelled and reserved slices, so only their studies get a dict.
    """

    def __init__(self, slice_map: SliceMap) -> None:
        self.slice_map = slice_map
        self._by_image: dict[str, dict[int, int]] = {}

    def get(self, key: tuple[str, int]) -> int | None:
        image_id, slice_index = key
        rows = self._by_image.get(image_id)
        if rows is None:
            found = self.slice_map.rows_of(image_id)
            rows = dict(zip(self.slice_map.slices[found].tolist(), found.tolist()))
            self._by_image[image_id] = rows
        return rows.get(slice_index)


class SliceLabelService:
    """Suggestions, labels and classification over one datastore's slice map.

    Args:
        settings: parsed ``--conf`` settings.
        studies: the datastore folder.
        training_running: callable telling whether MONAI Label's training subprocess runs now.
    """

    def __init__(
        self,
        settings: AppSettings,
        studies: str | Path,
        training_running: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.studies = Path(studies)
        self.workspace = Workspace(settings.workspace)
        self.training_running = training_running
        self.pending = PendingSuggestions(settings.suggestion_ttl_s, settings.suggestion_cap)
        self.fingerprints = FingerprintCache()
        self.maps = LiveSliceMap(settings, self.studies, self.workspace, training_running, self.fingerprints)
        self.embedder = self.maps.embedder
        self._depths: dict[str, tuple[Stamp, int | str]] = {}  # path -> (stamp, slices or why unreadable)
        # raises OrphanedLabelsError when --conf classes drops a class that still holds labels
        # read-only until the server process opens it for writing (MONAI Label's subprocesses never write)
        self.labels = SliceLabelStore(self.studies / "labels" / LABEL_TAG, settings.classes, self.depth_of,
                                      writable=False)
        self.on_labels_changed: Callable[[str], None] | None = None
        self._random_calls = itertools.count()
        self._flags: tuple[Any, float, dict[tuple[str, int], str]] = (None, 0.0, {})
        self._image_flags: dict[str, tuple[Any, dict[tuple[str, int], str]]] = {}  # per image: (inputs, flags)
        self._relabelled: set[str] = set()  # images whose labels changed since flags() last looked
        self._relabelled_lock = threading.Lock()
        # per map: the FPS index (used under pending.selection_lock) and the labelled-slice index
        # (weak references: an index never keeps a replaced map in memory)
        self._fps: tuple[weakref.ref[SliceMap] | None, SuggestionIndex | None] = (None, None)
        self._nn_lock = threading.Lock()
        self._map_rows: tuple[weakref.ref[SliceMap] | None, MapRows | None] = (None, None)
        self._nn: tuple[weakref.ref[SliceMap] | None, NearestLabelIndex | None, Any, dict[int, str]] = \
            (None, None, None, {})

    # -- slice map and studies (see lib.live_map) --------------------------------------------------------
    def slice_map(self) -> SliceMap | None:
        """The current map, or None before training (never waits for a background embedding)."""
        return self.maps.current()

    def study(self, image_id: str) -> Study | None:
        """The study (file or DICOM series folder) of an image id, or None when the folder has none."""
        return self.maps.study(image_id)

    def maybe_refresh(self) -> bool:
        return self.maps.maybe_refresh()

    def wait_refresh(self, timeout_s: float = 60.0) -> None:
        self.maps.wait_refresh(timeout_s)

    def require_map(self) -> SliceMap:
        slice_map = self.slice_map()
        if slice_map is None or len(slice_map) == 0:
            if self.training_running():
                raise NotReadyError("the model is still training; suggestions and classification start when it ends")
            raise NotReadyError("the model is not trained yet: start training with POST /train/ss_stylegan")
        return slice_map

    def depth_of(self, image_id: str, slice_map: SliceMap | None = None) -> int | None:
        """Number of slices of a datastore image now (None when the datastore has no such image).

        The map's count is used while the study's file is the one that was embedded; otherwise the file
        is read (once per stamp). ``slice_map``: the current map when the caller already has it.

        Raises:
            UnreadableImageError: the image is in the datastore but cannot be read.
        """
        study = self.study(image_id)
        if study is None:
            return None
        slice_map = slice_map if slice_map is not None else self.slice_map()
        if slice_map is not None and (image_id in slice_map.depths or image_id in slice_map.errors) \
                and not self.maps.is_stale(image_id, slice_map):
            if image_id in slice_map.depths:
                return slice_map.depths[image_id]
            raise UnreadableImageError(slice_map.errors[image_id])
        now = study_stamp(study.path)
        if now is None:
            return None
        key = str(study.path)
        cached = self._depths.get(key)
        if cached is None or cached[0] != now:
            try:
                cached = (now, read_volume(study.path).n_slices)
            except StudyReadError as err:
                cached = (now, str(err))
            self._depths[key] = cached
        if isinstance(cached[1], str):
            raise UnreadableImageError(cached[1])
        return cached[1]

    def study_state(self, image_id: str, records: list[dict[str, Any]], slice_map: SliceMap | None = None
                    ) -> StudyState:
        """What the studies folder holds for ``image_id`` now, to judge its ``records`` by (hashes the file
        only when a record's stamp differs from the file's)."""
        study = self.study(image_id)
        if study is None:
            return StudyState(exists=False)
        try:
            n_slices = self.depth_of(image_id, slice_map)
        except UnreadableImageError as err:
            return StudyState(exists=True, error=str(err))
        now = study_stamp(study.path)
        state = StudyState(exists=True, n_slices=n_slices, fingerprint=Fingerprint(now) if now else None)
        if state.needs_hash(records):
            state = StudyState(exists=True, n_slices=n_slices, fingerprint=self.fingerprints.fingerprint(study.path))
        return state

    def flags(self) -> dict[tuple[str, int], str]:
        """``{(image, slice): why the label no longer fits}`` for every flagged label.

        Every study with labels is judged again when the map or the studies folder change, and at most every
        ``FLAGS_TTL_S`` otherwise (a study file changed in place); a study whose labels, file stamp, map and
        folder are unchanged since it was last judged keeps its flags, at the cost of one ``stat``. Between
        those sweeps, a label change re-judges only the studies whose labels changed, so it costs no more
        with thousands of labelled studies.
        """
        slice_map = self.maps.current()
        scene = (id(slice_map), self.maps.changed, self.maps.folder_stamp())
        key = (self.labels.version, *scene)
        cached_key, at, flags = self._flags
        now = time.monotonic()
        if cached_key is not None and cached_key[1:] == scene and now - at < FLAGS_TTL_S:
            if cached_key == key:
                return flags
            relabelled = self._take_relabelled()
            flags = {k: v for k, v in flags.items() if k[0] not in relabelled}
            for image_id in relabelled:
                records = self.labels.records(image_id)
                flags.update(self._judge(image_id, records, slice_map, scene)[1])
            self._flags = (key, at, flags)  # the time of the last sweep: the next one is still due at `at + TTL`
            return flags
        self._take_relabelled()
        flags = {}
        kept, judged = self._image_flags, {}
        for image_id in self.labels.images():
            records = self.labels.records(image_id)
            previous = kept.get(image_id)
            if previous is not None and previous[0] == self._signature(image_id, records, scene):
                judged[image_id] = previous
            else:
                judged[image_id] = self._judge(image_id, records, slice_map, scene)
            flags.update(judged[image_id][1])
        self._image_flags = judged
        self._flags = (key, now, flags)
        return flags

    def _signature(self, image_id: str, records: list[dict[str, Any]], scene: tuple[Any, ...]) -> tuple[Any, ...]:
        """What an image's flags depend on: the map and the studies being re-read (``scene`` without the
        folder's stamp, which moves with every rewrite of MONAI Label's datastore file), the study's file and
        its stamp (None when the study is gone), and its labels."""
        study = self.study(image_id)
        return (scene[:2], None if study is None else (study.path, study_stamp(study.path)),
                [(r["slice"], r["class"], r["timestamp"], r.get("study")) for r in records])

    def _judge(self, image_id: str, records: list[dict[str, Any]], slice_map: SliceMap | None,
               scene: tuple[Any, ...]) -> tuple[tuple[Any, ...], dict[tuple[str, int], str]]:
        """``(signature, flags)`` of one image's labels, judged against its study now (kept for the next sweep)."""
        signature = self._signature(image_id, records, scene)
        state = self.study_state(image_id, records, slice_map)
        judged = (signature, {(image_id, r["slice"]): reason for r in records if (reason := flag_of(r, state))})
        self._image_flags[image_id] = judged
        return judged

    def _take_relabelled(self) -> set[str]:
        with self._relabelled_lock:
            taken, self._relabelled = self._relabelled, set()
        return taken

    def _relabelling(self, image_id: str) -> None:
        """Called before a label of ``image_id`` is written, so a flags computation that sees the store's new
        version always re-judges the image."""
        with self._relabelled_lock:
            self._relabelled.add(image_id)

    def usable_labels(self) -> dict[tuple[str, int], str]:
        """``{(image, slice): class}`` of every label that is not flagged."""
        flags = self.flags()
        return {k: c for k, c in self.labels.labelled_keys().items() if k not in flags}

    def label_records(self, image_id: str | None = None) -> list[dict[str, Any]]:
        """Stored records (of one image), each with ``"flag"`` when it no longer fits its study."""
        if image_id is not None:
            identifier(image_id, "image")
        self.maybe_refresh()
        flags = self.flags()
        out = []
        for record in self.labels.records(image_id):
            shown = public_record(record)
            reason = flags.get((record["image"], record["slice"]))
            out.append({**shown, "flag": reason} if reason else shown)
        return out

    # -- state ------------------------------------------------------------------------------------------
    @staticmethod
    def _map_block(slice_map: Any) -> dict[str, Any] | None:
        """Which map is live and how far its model was trained (``step``, ``kimg``, ``minutes``, ``final``)."""
        if slice_map is None:
            return None
        return {"version": slice_map.version.name if slice_map.version is not None else None,
                "model_version": slice_map.model_version, "training": dict(slice_map.training)}

    def state(self) -> dict[str, Any]:
        """The ``ss_stylegan`` block of ``GET /info/``."""
        status = self.workspace.read_status()
        slice_map = self.slice_map()
        running = self.training_running()
        if running:
            state, message = "training", status.message or "training"
        elif slice_map is not None and len(slice_map):
            state, message = "ready", f"{len(slice_map)} slices embedded with model {slice_map.model_version}"
            if status.state == "failed":
                message += f"; the last training failed: {status.message}"
            elif status.state == "training":
                message += "; the last training was interrupted: POST /train/ss_stylegan resumes it"
        elif status.state == "failed":
            state, message = "failed", status.message
        elif status.state == "training":
            state = "untrained"
            message = "training was interrupted; POST /train/ss_stylegan resumes from the last checkpoint"
        else:
            state, message = "untrained", status.message or "not trained yet: POST /train/ss_stylegan"
        if self.maps.problem:
            message += f"; the published map could not be loaded ({self.maps.problem}), the previous one is in use"
        self.maybe_refresh()
        errors = dict(slice_map.errors) if slice_map is not None else {}
        errors.update(self.maps.failed)
        flagged = [r for r in self.label_records() if "flag" in r]
        return {
            "state": state,
            "message": message,
            "classes": list(self.settings.classes),
            "n_slices": len(slice_map) if slice_map is not None else 0,
            "n_embedded": len(slice_map) if slice_map is not None else 0,
            "n_images_embedded": len(slice_map.image_set()) if slice_map is not None else 0,
            "n_labelled": len(self.labels),
            "n_flagged": len(flagged),
            "flagged_labels": [{k: r[k] for k in ("image", "slice", "class", "flag")} for r in flagged[:100]],
            "changed": sorted(self.maps.changed),
            "model_version": slice_map.model_version if slice_map is not None else None,
            "map": self._map_block(slice_map),
            "progress": status.progress,
            "errors": errors,
            "embedding": sorted(self.maps.embedding),
            "ignored_files": self.maps.ignored_files(),
            "settings": {
                "resolution": self.settings.slice_cfg.resolution,
                "window": self.settings.slice_cfg.window,
                "preset": self.settings.preset,
                "device": self.settings.device,
                "gpus": self.settings.gpus,
                "kimg": self.settings.train_cfg.kimg,
                "steps": self.settings.train_cfg.steps,
                "batch_size": self.settings.train_cfg.batch_size,
                "train_minutes": self.settings.train_cfg.max_minutes,
                "publish_minutes": self.settings.train_cfg.milestone_minutes,
                "perplexity": self.settings.perplexity,
                "random_state": self.settings.random_state,
            },
        }

    # -- suggestions ------------------------------------------------------------------------------------
    def suggest(self, strategy: str, count: Any = 1, client_id: Any = "", owner: str | None = None
                ) -> dict[str, Any]:
        """The next slice(s) to label: farthest from every labelled or reserved slice (``fps``) or random.

        Args:
            strategy: ``fps`` or ``random``.
            count: how many (1 .. ``suggestion_cap``); they are reserved for the client.
            client_id: who asks (reservations are per client; default ``anonymous``).
            owner: whose cap the reservations count against (the signed-in user); the client by default.

        Raises:
            NotFoundError: unknown strategy. FieldError: a bad ``count`` or ``client_id``.
            ReservationLimitError: the owner holds too many reservations under other client ids.
            NotReadyError: no map yet.
        """
        if strategy not in STRATEGIES:
            raise NotFoundError(f"unknown strategy {strategy!r}; valid strategies are {list(STRATEGIES)}")
        cap = self.settings.suggestion_cap
        if isinstance(count, int) and not isinstance(count, bool) and count > cap:
            raise FieldError("count", f"at most {cap} suggestions may be reserved at once (setting "
                                      f"suggestion_cap), got {count}")
        count = integer(count, "count", minimum=1, maximum=cap)
        client = text(client_id or "", "client_id", MAX_CLIENT_ID_CHARS) or "anonymous"
        self.pending.check_count(count, client, owner)
        slice_map = self.require_map()
        self.maybe_refresh()
        row_of = self._rows(slice_map)
        with self.pending.selection_lock:
            removed = self.maps.removed_rows(slice_map)
            gone = np.zeros(len(slice_map), dtype=bool)
            gone[removed] = True
            # slices of studies that left the folder are unavailable, but neither labelled nor reserved:
            # they must not act as FPS centres (that would push their neighbours to the end)
            labelled = [r for r in (row_of.get(k) for k in self.usable_labels()) if r is not None and not gone[r]]
            reserved = [r for r in (row_of.get(k) for k in self.pending.reserved(exclude_client=client))
                        if r is not None and not gone[r]]
            if strategy == "fps":  # the map's kept index: only what changed since the last call is applied
                picks = self._suggestion_index(slice_map).select(labelled=labelled, pending=reserved, count=count,
                                                                 exclude=removed)
            else:  # a new draw per call, repeatable from --conf random_state
                selector = RandomSelector(random_state=derive_seed(self.settings.random_state,
                                                                   next(self._random_calls)))
                picks = selector.select(slice_map.xy, labelled=labelled, pending=reserved, count=count,
                                        exclude=removed)
            keys = [(str(slice_map.image_ids[p.index]), int(slice_map.slices[p.index])) for p in picks]
            self.pending.reserve(client, keys, owner)
        if not picks:
            n_active = len(slice_map) - len(removed)
            message = (
                "every embedded slice is labelled" if len(labelled) >= n_active
                else "every unlabelled slice is currently suggested to another annotator; try again later"
            )
            return {"done": True, "message": message, "suggestions": [], "n_labelled": len(labelled)}
        suggestions = []
        for pick in picks:
            row = pick.index
            suggestions.append({
                "id": str(slice_map.image_ids[row]),
                "slice": int(slice_map.slices[row]),
                "position": [float(v) for v in slice_map.xy[row]],
                "world": [float(v) for v in slice_map.positions[row]],
                "distance": None if pick.distance is None else float(pick.distance),
                "reason": pick.reason,
                "strategy": strategy,
            })
        return {**suggestions[0], "suggestions": suggestions}

    def _rows(self, slice_map: SliceMap) -> MapRows:
        """The map's ``(image, slice) -> row`` lookup (kept per map)."""
        kept_map, rows = self._map_rows
        if rows is None or kept_map is None or kept_map() is not slice_map:
            rows = MapRows(slice_map)
            self._map_rows = (weakref.ref(slice_map), rows)
        return rows

    def _suggestion_index(self, slice_map: SliceMap) -> SuggestionIndex:
        """The map's FPS index (built on the first suggestion from a map). Caller holds
        ``pending.selection_lock``."""
        kept_map, index = self._fps
        if index is None or kept_map is None or kept_map() is not slice_map:
            index = SuggestionIndex(slice_map.xy, start="central", random_state=self.settings.random_state)
            self._fps = (weakref.ref(slice_map), index)
            settle_garbage_collector()
        return index

    # -- labels -----------------------------------------------------------------------------------------
    def set_label(self, image_id: Any, slice_index: Any, class_name: Any, user: Any = "") -> dict[str, Any]:
        """Store the label of one slice, with the study's fingerprint now (see :meth:`flags`)."""
        study = self.study(identifier(image_id, "image"))  # the store checks the rest
        fingerprint = self.fingerprints.fingerprint(study.path) if study is not None else None
        self._relabelling(image_id)
        record = self.labels.set(image_id, slice_index, class_name, user, study=fingerprint)
        self.pending.release((image_id, slice_index))
        if self.on_labels_changed is not None:
            self.on_labels_changed(image_id)
        return public_record(record)

    def remove_label(self, image_id: str, slice_index: int) -> bool:
        self._relabelling(image_id)
        removed = self.labels.remove(image_id, slice_index)
        if removed and self.on_labels_changed is not None:
            self.on_labels_changed(image_id)
        return removed

    # -- classification ---------------------------------------------------------------------------------
    def _predict(self, slice_map: SliceMap, xy: np.ndarray) -> tuple[Prediction, np.ndarray]:
        """1-NN of ``xy`` against the usable labels of ``slice_map``'s slices: the prediction (neighbours
        are map rows) and the labelled classes (the columns of ``scores``).

        Raises:
            NotReadyError: no slice of the map has a usable label.
        """
        with self._nn_lock:
            index = self._label_index(slice_map)
            return index.predict(xy), index.classes_

    def _label_index(self, slice_map: SliceMap) -> NearestLabelIndex:
        """The map's 1-NN index, brought to the usable labels of slices whose study is in the folder (only
        the labels that changed are applied; nothing is recomputed while labels, flags and studies stay the
        same). Caller holds ``_nn_lock``.

        Raises:
            NotReadyError: no slice of the map has a usable label.
        """
        kept_map, index, kept_key, kept = self._nn
        if index is None or kept_map is None or kept_map() is not slice_map:
            index, kept_key, kept = NearestLabelIndex(slice_map.xy), None, {}
        flags = self.flags()
        removed = self.maps.removed_rows(slice_map)
        key = (self.labels.version, flags, removed)
        if kept_key is None or key[0] != kept_key[0] or key[1] is not kept_key[1] or key[2] is not kept_key[2]:
            row_of = self._rows(slice_map)
            gone = set(slice_map.image_ids[removed].tolist())
            wanted = {row: c for k, c in self.labels.labelled_keys().items()
                      if k not in flags and k[0] not in gone and (row := row_of.get(k)) is not None}
            dropped = [r for r in kept if r not in wanted]
            changed = {r: c for r, c in wanted.items() if kept.get(r) != c}
            if dropped:
                index.remove_labels(dropped)
            if changed:
                index.set_labels(list(changed), list(changed.values()))
            kept, kept_key = wanted, key
        self._nn = (weakref.ref(slice_map), index, kept_key, kept)
        if index.n_labelled == 0:
            raise NotReadyError(
                "no embedded slice is labelled yet: label at least one slice of each class "
                f"({', '.join(self.settings.classes)}) with PUT /slicelabels/ before classifying"
            )
        return index

    def _answer(self, slice_map: SliceMap, xy: np.ndarray, slices: np.ndarray, positions: np.ndarray,
                depth: int | None) -> dict[str, Any]:
        pred, classes = self._predict(slice_map, xy)
        out_slices = []
        summary = {c: 0 for c in self.settings.classes}
        for i in range(len(xy)):
            row = int(pred.neighbour[i])
            cls = str(pred.labels[i])  # 1-NN: the neighbour's class
            summary[cls] = summary.get(cls, 0) + 1
            out_slices.append({
                "slice": int(slices[i]),
                "class": cls,
                "score": float(pred.score[i]),
                "scores": {str(c): float(s) for c, s in zip(classes, pred.scores[i])},
                "neighbour": {"image": str(slice_map.image_ids[row]), "slice": int(slice_map.slices[row]),
                              "class": cls, "distance": float(pred.distance[i])},
                "position": [float(v) for v in xy[i]],
                "world": [float(v) for v in positions[i]],
            })
        counts = {c: n for c, n in summary.items() if c != self.settings.classes[0]}
        abnormal = max(counts, key=lambda c: counts[c]) if any(counts.values()) else None
        answer: dict[str, Any] = {
            "slices": out_slices,
            "summary": summary,
            "volume_class": abnormal or self.settings.classes[0],
            "n_slices": depth,
            "labelled_classes": [str(c) for c in classes],
        }
        if len(classes) < 2:
            answer["warning"] = (
                f"only class {classes[0]!r} is labelled, so every slice gets it; label slices of "
                "the other classes for a meaningful classification"
            )
        return answer

    def classify_image(self, image_id: str) -> dict[str, Any]:
        """Classify every embedded slice of a datastore image (a file or DICOM series folder).

        The volume class is the first (normal) class when no slice is predicted as another class, else
        the other class with the most slices. Never waits for a background embedding.

        Raises:
            NotFoundError: no study with this id in the studies folder.
            EmbeddingInProgressError: the study was added after training and is being embedded now.
            NotReadyError: no map, no label, or no usable slice in the study.
            UnreadableImageError: the study cannot be read.
        """
        identifier(image_id, "image")
        if self.study(image_id) is None:
            raise NotFoundError(f"image {image_id!r} is not in the datastore; list images with GET /datastore/")
        slice_map = self.require_map()
        if self.maps.is_stale(image_id, slice_map):
            raise EmbeddingInProgressError(f"image {image_id!r} changed on disk since it was embedded; it is "
                                           "being read again, retry in a few seconds")
        rows = slice_map.rows_of(image_id)
        if len(rows) == 0:
            error = slice_map.errors.get(image_id)
            if error:
                raise UnreadableImageError(f"image {image_id!r} could not be used: {error}")
            if image_id not in slice_map.depths:  # added after the map was made
                if image_id in self.maps.embedding or self.maybe_refresh() and image_id in self.maps.embedding:
                    raise EmbeddingInProgressError(
                        f"new studies are being embedded, retry in a few seconds (image {image_id!r})")
                if image_id in self.maps.failed:
                    raise NotReadyError(f"image {image_id!r} is not in the map: {self.maps.failed[image_id]}")
                if self.training_running():
                    raise NotReadyError(f"image {image_id!r} was added during training; it is embedded when "
                                        "training ends")
                raise EmbeddingInProgressError(
                    f"new studies are being embedded, retry in a few seconds (image {image_id!r})")
            raise NotReadyError(
                f"image {image_id!r} has no embedded slice: no slice has enough foreground "
                "(a blank or constant image?); check the file or the intensity window (--conf window)"
            )
        answer = self._answer(slice_map, slice_map.xy[rows], slice_map.slices[rows], slice_map.positions[rows],
                              slice_map.depths.get(image_id))
        answer["image"] = image_id
        answer["model_version"] = slice_map.model_version
        return answer

    def classify_file(self, path: str | Path) -> dict[str, Any]:
        """Classify a study that is not in the datastore: read, embed, place into the map, 1-NN.

        Raises:
            NotReadyError: no map or no label yet.
            StudyReadError: the file cannot be read or has no usable slice.
            WorkspaceError: the published model cannot place slices into the map (train again).
        """
        slice_map = self.require_map()
        with self._nn_lock:  # no label yet: refuse before reading the file
            self._label_index(slice_map)
        study = read_study_slices(path, self.settings.slice_cfg)
        if len(study.images) == 0:
            raise StudyReadError(path, "no slice has enough foreground to classify",
                                 "check the intensity window (--conf window) or the file")
        _, xy = self.embedder.embed_and_place(study.images, slice_map)
        answer = self._answer(slice_map, xy, study.slice_indices, study.positions, study.n_slices)
        answer["image"] = None
        answer["model_version"] = slice_map.model_version
        return answer

    def slice_png(self, image_id: str, slice_index: int) -> bytes:
        """One slice of a datastore study as the model sees it (canonical, windowed, resized), as PNG.

        Raises:
            NotFoundError: no study with this id in the studies folder.
            NotReadyError: before training (the model-ready image is the trained map's input).
            SliceOutOfRangeError: the study has no such slice (the message gives the range).
            UnreadableImageError: the study cannot be read.
        """
        study = self.study(identifier(image_id, "image"))
        if study is None:
            raise NotFoundError(f"image {image_id!r} is not in the datastore; list images with GET /datastore/")
        self.require_map()
        try:
            volume = read_volume(study.path)
        except StudyReadError as err:
            raise UnreadableImageError(str(err)) from err
        try:
            image = model_ready_slice(volume, slice_index, self.settings.slice_cfg)
        except IndexError as err:
            raise SliceOutOfRangeError(f"image {image_id!r}: {err}") from err
        return encode_png(image)

    def series_archive(self, image_id: str, folder: str | Path) -> Path:
        """A DICOM series study packed as one uncompressed zip file in ``folder`` (MONAI Label's
        ``GET /datastore/image`` serves only single-file studies).

        Raises:
            NotFoundError: no study with this id, or the study is a single file.
        """
        study = self.study(identifier(image_id, "image"))
        if study is None:
            raise NotFoundError(f"image {image_id!r} is not in the datastore; list images with GET /datastore/")
        if not study.path.is_dir():
            raise NotFoundError(f"image {image_id!r} is a single file, not a DICOM series: download it with "
                                "GET /datastore/image")
        target = Path(folder) / f"{image_id}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
            for path in sorted(p for p in study.path.iterdir()
                               if p.is_file() and not p.is_symlink() and looks_like_dicom_file(p)):
                archive.write(path, path.name)
        return target

    def points(self) -> dict[str, Any]:
        """Every embedded slice of a study in the folder, with its map position, world position, label and
        (when labels exist) prediction; slices of deleted or changed studies are left out."""
        slice_map = self.require_map()
        self.maybe_refresh()
        keep = np.ones(len(slice_map), dtype=bool)
        keep[self.maps.removed_rows(slice_map)] = False
        keys = self.usable_labels()
        image_ids, slices = slice_map.image_ids[keep].tolist(), slice_map.slices[keep].tolist()
        label = [keys.get((img, int(s))) for img, s in zip(image_ids, slices)]
        prediction: list[str | None] = [None] * len(image_ids)
        score: list[float | None] = [None] * len(image_ids)
        try:
            pred, _ = self._predict(slice_map, slice_map.xy[keep])
            prediction = [str(c) for c in pred.labels]
            score = [float(s) for s in pred.score]
        except NotReadyError:
            pass
        return {
            "model_version": slice_map.model_version,
            "points": {
                "image": image_ids,
                "slice": slices,
                "x": slice_map.xy[keep, 0].astype(float).tolist(),
                "y": slice_map.xy[keep, 1].astype(float).tolist(),
                "world": slice_map.positions[keep].astype(float).tolist(),
                "label": label,
                "prediction": prediction,
                "score": score,
            },
        }
