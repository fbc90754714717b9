"""The labelling session behind the Slicer module: everything a clinician does, without any drawing.

State kept here (and nowhere in the widget): the model state and classes, the queue of suggestions not yet
labelled, a local mirror of the server's labels, the slice on screen, per-study predictions, the map, the
number-key shortcuts, and where each slice sits in the world (for jumping to it).

What "next suggestion" does: labelled entries leave the queue; the first queued suggestion is taken, and only
when the queue is empty is the server asked (``count`` suggestions at once, tagged with this user's
``client_id`` so pending suggestions of other users are avoided). A suggestion shown and not labelled is not
asked for again: it stays in :attr:`LabelSession.skipped` and on the map.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .atomicfile import write_bytes_atomic
from .client import SSGLClient
from .errors import ServerError, SessionError
from .mapview import MapPoints
from .records import Classification, ModelState, SliceKey, SliceLabel, Suggestion

logger = logging.getLogger(__name__)

MAX_SHORTCUTS = 9
CSV_COLUMNS = (
    "image", "slice", "label", "label_user", "label_timestamp",
    "prediction", "score", "neighbour_image", "neighbour_slice", "neighbour_distance", "source",
)


@dataclasses.dataclass(frozen=True)
class CurrentSlice:
    """The slice on screen: which study, which slice, where it is in the world, and why it is shown.

    Attributes:
        image: datastore image id; slice: axial slice index.
        world: (R, A, S) centre of the slice in mm, or None when the server never said (the viewer then
            computes it from the volume geometry).
        suggestion: the suggestion that brought it up, or None when the user went to it themselves.
    """

    image: str
    slice: int
    world: tuple[float, float, float] | None
    suggestion: Suggestion | None = None

    @property
    def key(self) -> SliceKey:
        return (self.image, self.slice)


def class_shortcuts(classes: Sequence[str]) -> dict[str, str]:
    """Number keys ``"1"`` .. ``"9"`` -> class name, in the server's class order (first nine classes)."""
    return {str(i + 1): name for i, name in enumerate(classes[:MAX_SHORTCUTS])}


class LabelSession:
    """One clinician's labelling session against one server.

    Args:
        client: the server connection.
        user: who labels (stored with every label, and the ``client_id`` for suggestions).
        strategy: one of the server's strategies (``typiclust``, ``fps``, ``random``, ``probcover``, ``fps_w``).
        batch_size: suggestions fetched per server call when the queue runs empty.
    """

    def __init__(self, client: SSGLClient, user: str, strategy: str = "typiclust", batch_size: int = 1) -> None:
        if not user or not user.strip():
            raise SessionError("enter a user name: every label is stored with the name of who gave it")
        if batch_size < 1:
            raise SessionError(f"batch size must be at least 1, got {batch_size}")
        self.client = client
        self.user = user.strip()
        self.strategy = strategy
        self.batch_size = int(batch_size)
        self.state: ModelState | None = None
        self.queue: collections.deque[Suggestion] = collections.deque()
        self.skipped: list[Suggestion] = []
        self.labels: dict[SliceKey, SliceLabel] = {}
        self.predictions: dict[str, Classification] = {}
        self.map: MapPoints | None = None
        self.current: CurrentSlice | None = None
        self.done_message = ""
        self._world: dict[SliceKey, tuple[float, float, float]] = {}

    # -- connection and model state ----------------------------------------------------------------
    def connect(self) -> ModelState:
        """Read classes and model state, and mirror the server's labels."""
        self.refresh_state()
        self.sync_labels()
        return self.state  # type: ignore[return-value]

    def refresh_state(self) -> ModelState:
        """Re-read ``GET /info/`` (cheap; the widget polls it while training runs)."""
        self.state = self.client.info()
        return self.state

    @property
    def classes(self) -> tuple[str, ...]:
        return self.state.classes if self.state else ()

    @property
    def shortcuts(self) -> dict[str, str]:
        return class_shortcuts(self.classes)

    def sync_labels(self) -> dict[SliceKey, SliceLabel]:
        """Replace the local label mirror with the server's labels (other users' included)."""
        self.labels = {rec.key: rec for rec in self.client.labels()}
        return self.labels

    # -- training ------------------------------------------------------------------------------------
    def start_training(self, kimg: float | None = None, batch_size: int | None = None,
                       device: str | None = None) -> ModelState:
        """Start training on the server and return the state right after."""
        self.client.start_training(kimg=kimg, batch_size=batch_size, device=device)
        return self.refresh_state()

    def stop_training(self) -> ModelState:
        self.client.stop_training()
        return self.refresh_state()

    def training_finished(self) -> bool:
        """Poll once: True when no training runs any more (ready, failed or untrained after a stop)."""
        state = self.refresh_state()
        if state.training:
            return False
        status = self.client.training_status()
        return str(status.get("status", "")).upper() not in ("SUBMITTED", "RUNNING", "QUEUED")

    # -- suggestions ---------------------------------------------------------------------------------
    def next_suggestion(self) -> CurrentSlice | None:
        """Make the next slice to label current (queued first, then asked from the server).

        Returns:
            The new current slice, or None when the server has nothing left to suggest
            (:attr:`done_message` says so).
        """
        if self.current is not None and self.current.suggestion is not None and self.current.key not in self.labels:
            self.skipped.append(self.current.suggestion)
        self._drop_labelled()
        if not self.queue:
            self._fetch(self.batch_size)
        if not self.queue and self.skipped:
            # the server may hand back slices this user skipped: ask for enough to get past them
            self._fetch(self.batch_size + len(self.skipped))
        if not self.queue:
            self.done_message = "no slice left to suggest: every slice is labelled or already suggested"
            return None
        self.done_message = ""
        sug = self.queue.popleft()
        self.current = CurrentSlice(sug.image, sug.slice, sug.world or self._world.get(sug.key), sug)
        return self.current

    def _fetch(self, count: int) -> None:
        """Ask the server for ``count`` suggestions and queue those not labelled, queued or skipped."""
        seen = {s.key for s in self.queue} | {s.key for s in self.skipped}
        for sug in self.client.suggest(self.strategy, count=count, client_id=self.user):
            if sug.world is not None:
                self._world[sug.key] = sug.world
            if sug.key not in self.labels and sug.key not in seen:
                self.queue.append(sug)
                seen.add(sug.key)

    def _drop_labelled(self) -> None:
        self.queue = collections.deque(s for s in self.queue if s.key not in self.labels)
        self.skipped = [s for s in self.skipped if s.key not in self.labels]

    def release_pending(self) -> list[SliceKey]:
        """Give every suggestion not labelled back to the server (the user stops, or the module closes) and
        forget them here; the slice on screen stays, as a plain slice. Returns the keys the server freed."""
        released = self.client.release_suggestions(self.user)
        self.queue.clear()
        self.skipped = []
        if self.current is not None and self.current.suggestion is not None:
            self.current = dataclasses.replace(self.current, suggestion=None)
        return released

    @property
    def pending(self) -> list[SliceKey]:
        """Suggested slices not labelled yet (queued, on screen or skipped), for highlighting on the map."""
        keys = [s.key for s in self.queue] + [s.key for s in self.skipped]
        if self.current is not None and self.current.suggestion is not None:
            keys.append(self.current.key)
        return [k for k in dict.fromkeys(keys) if k not in self.labels]

    # -- navigation ----------------------------------------------------------------------------------
    def go_to(self, image: str, slice_index: int) -> CurrentSlice:
        """Make any slice current (a labelled one to relabel, a map click, a row of the prediction table)."""
        key = (image, int(slice_index))
        suggestion = next((s for s in list(self.queue) + self.skipped if s.key == key), None)
        if suggestion is not None:
            self.queue = collections.deque(s for s in self.queue if s.key != key)
            self.skipped = [s for s in self.skipped if s.key != key]
        self.current = CurrentSlice(image, int(slice_index), self.world_of(image, int(slice_index)), suggestion)
        return self.current

    def world_of(self, image: str, slice_index: int) -> tuple[float, float, float] | None:
        """World (R, A, S) of a slice as the server reported it, fetching the map once if needed.

        Returns None when the server cannot say (not trained yet, or a slice left out of the map as
        empty); the viewer then computes the position from the volume.
        """
        key = (image, int(slice_index))
        if key not in self._world and self.map is None:
            try:
                self.refresh_map()
            except ServerError as err:
                logger.info("no world position for %s slice %d yet: %s", image, slice_index, err.detail)
        return self._world.get(key)

    def slice_worlds(self, image: str) -> dict[int, tuple[float, float, float]]:
        """Slice index -> world (R, A, S) of every slice of ``image`` whose position the server reported."""
        return {sl: w for (img, sl), w in self._world.items() if img == image}

    def class_at(self, image: str, slice_index: int) -> tuple[str | None, str]:
        """What to show for a slice: ``(class, source)`` with source ``"label"``, ``"prediction"`` or ``""``.

        A label given by a person wins over a prediction; a slice with neither gives ``(None, "")``.
        """
        record = self.labels.get((image, int(slice_index)))
        if record is not None:
            return record.class_name, "label"
        result = self.predictions.get(image)
        predicted = result.class_of(int(slice_index)) if result is not None else None
        if predicted is not None:
            return predicted, "prediction"
        return None, ""

    def labelled_slices(self) -> list[SliceLabel]:
        """Labels in the order they were given (oldest first), for the 'go back' list."""
        return sorted(self.labels.values(), key=lambda r: (str(r.timestamp or ""), r.image, r.slice))

    # -- labelling -----------------------------------------------------------------------------------
    def label_current(self, class_name: str) -> SliceLabel:
        """Give the current slice a class (replaces an earlier label of the same slice)."""
        if self.current is None:
            raise SessionError("no slice is shown: ask for the next suggestion or pick a slice first")
        return self.label(self.current.image, self.current.slice, class_name)

    def label_key(self, key: str) -> SliceLabel:
        """Label the current slice with the class bound to number key ``key`` (``"1"`` .. ``"9"``)."""
        shortcuts = self.shortcuts
        if key not in shortcuts:
            bound = ", ".join(f"{k} = {v}" for k, v in shortcuts.items()) or "none (connect first)"
            raise SessionError(f"key {key!r} is not bound to a class; the keys are: {bound}")
        return self.label_current(shortcuts[key])

    def label(self, image: str, slice_index: int, class_name: str) -> SliceLabel:
        """Store a class for any slice on the server and in the local mirror.

        Raises:
            ServerError: the server refused it (unknown image or class, slice out of range).
        """
        record = self.client.put_label(image, int(slice_index), class_name, self.user)
        self.labels[record.key] = record
        self._drop_labelled()
        self._refresh_map_labels()
        return record

    def unlabel(self, image: str, slice_index: int) -> None:
        """Remove the label of one slice on the server and locally."""
        self.client.delete_label(image, int(slice_index))
        self.labels.pop((image, int(slice_index)), None)
        self._refresh_map_labels()

    def _refresh_map_labels(self) -> None:
        if self.map is not None:
            self.map = self.map.with_labels({k: r.class_name for k, r in self.labels.items()})

    # -- map and classification ----------------------------------------------------------------------
    def refresh_map(self) -> MapPoints:
        """Fetch the map of every embedded slice; its label column shows the local mirror."""
        self.map = MapPoints.from_json(self.client.slice_map()).with_labels(
            {k: r.class_name for k, r in self.labels.items()}
        )
        self._world.update(self.map.world_positions())
        return self.map

    def classify(self, image: str | None = None) -> Classification:
        """Classify every slice of a study (the current one by default) and keep the result."""
        if image is None:
            if self.current is None:
                raise SessionError("no study is shown: load a study (next suggestion) before classifying it")
            image = self.current.image
        result = self.client.classify(image)
        self.predictions[image] = result
        for pred in result.slices:
            if pred.world is not None:
                self._world[(image, pred.slice)] = pred.world
        return result

    # -- export --------------------------------------------------------------------------------------
    def export_rows(self) -> list[dict[str, object]]:
        """One row per known slice: its label (if any) and its prediction (if any).

        Slices come from the map (every embedded slice), the labels and the classified studies; a
        prediction from a classified study (with its neighbour) takes precedence over the map's.
        """
        rows: dict[SliceKey, dict[str, object]] = {}

        def row(key: SliceKey) -> dict[str, object]:
            if key not in rows:
                rows[key] = {c: "" for c in CSV_COLUMNS}
                rows[key].update(image=key[0], slice=key[1])
            return rows[key]

        if self.map is not None:
            for i in range(len(self.map)):
                pred = self.map.predictions[i]
                if pred is not None:
                    score = self.map.scores[i]
                    row(self.map.key(i)).update(prediction=pred, score="" if math.isnan(score) else float(score),
                                                source="map")
        for image, result in self.predictions.items():
            for p in result.slices:
                r = row((image, p.slice))
                r.update(prediction=p.class_name, score=p.score, source="classify")
                if p.neighbour is not None:
                    r.update(neighbour_image=p.neighbour.image, neighbour_slice=p.neighbour.slice,
                             neighbour_distance=p.neighbour.distance)
        for key, rec in self.labels.items():
            row(key).update(label=rec.class_name, label_user=rec.user,
                            label_timestamp="" if rec.timestamp is None else rec.timestamp)
        return [rows[k] for k in sorted(rows)]

    def export_csv(self, path: str | Path) -> Path:
        """Write all labels and predictions to a CSV file (atomically) and return its path."""
        text = rows_to_csv(self.export_rows())
        return write_bytes_atomic(Path(path), text.encode("utf-8"))


def rows_to_csv(rows: Sequence[Mapping[str, object]]) -> str:
    """CSV text with the header :data:`CSV_COLUMNS` and one line per row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: r.get(c, "") for c in CSV_COLUMNS})
    return buffer.getvalue()
