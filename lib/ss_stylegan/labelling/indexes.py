"""The per-map indexes behind suggestions and classification, changed instead of rebuilt.

Farthest point sampling keeps every slice's distance to its nearest labelled or reserved slice
(:class:`~ss_stylegan.selection.incremental.SuggestionIndex`), and 1-NN classification keeps a k-d tree per class
(:class:`~ss_stylegan.classification.nearest.NearestLabelIndex`). Their answers equal those of the stateless selector
and classifier. A new map (a training, or studies embedded into it) gets its FPS index built in a background
thread as soon as the service sees it (:meth:`MapIndexes.prepare`; a suggestion that comes first waits for that
build), and its label index on the first classification. Each index is held through a weak reference to its
map, so it never keeps a replaced map in memory.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ss_stylegan.classification.nearest import NearestLabelIndex, Prediction
from ss_stylegan.labelling.errors import NotReadyError
from ss_stylegan.maps.slice_map import SliceMap
from ss_stylegan.selection.incremental import SuggestionIndex


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

    A lookup of every slice would hold one Python tuple and dict entry per slice: at a million slices every
    full garbage collection of the server walks them, and such pauses stall concurrent requests. The server
    only looks up labelled and reserved slices, so only their studies get a dict. The map is held by weak
    reference (a replaced map is freed; its lookup then finds nothing).
    """

    def __init__(self, slice_map: SliceMap) -> None:
        self._map = weakref.ref(slice_map)
        self._by_image: dict[str, dict[int, int]] = {}

    def get(self, key: tuple[str, int]) -> int | None:
        image_id, slice_index = key
        rows = self._by_image.get(image_id)
        if rows is None:
            slice_map = self._map()
            if slice_map is None:
                return None
            found = slice_map.rows_of(image_id)
            rows = dict(zip(slice_map.slices[found].tolist(), found.tolist()))
            self._by_image[image_id] = rows
        return rows.get(slice_index)


class _ForMap(NamedTuple):
    """Something kept for one map, which is held by weak reference (a replaced map is never kept alive)."""

    map_ref: weakref.ref[SliceMap] | None
    value: Any

    def holds(self, slice_map: SliceMap) -> bool:
        return self.value is not None and self.map_ref is not None and self.map_ref() is slice_map


_NOTHING = _ForMap(None, None)


class _LabelInputs(NamedTuple):
    """What the 1-NN index's labels were last brought to (compared by identity: nothing changed while the
    same objects come back)."""

    version: Any
    flags: dict[tuple[str, int], str]
    removed: np.ndarray


class _LabelIndex(NamedTuple):
    map_ref: weakref.ref[SliceMap] | None
    index: NearestLabelIndex | None
    inputs: _LabelInputs | None
    applied: dict[int, str]        # map row -> class, as set in the index


class MapIndexes:
    """The row lookup, the FPS index and the 1-NN index of the current map.

    Args:
        random_state: seed of the FPS index's first pick when nothing is labelled (``central`` start).
        classes: the configured class names (for the message when nothing is labelled).
    """

    def __init__(self, random_state: int, classes: Sequence[str], busy: Callable[[], bool] | None = None) -> None:
        self.random_state = random_state
        self.busy = busy             # the FPS index's warm-up is skipped while a request waits (SuggestionIndex)
        self.classes = tuple(classes)
        self._rows = _NOTHING        # MapRows
        self._fps = _NOTHING         # SuggestionIndex
        self._fps_lock = threading.Lock()   # installing an FPS index; the build itself runs outside it
        self._building = _NOTHING    # the thread building the FPS index
        self._nn_lock = threading.Lock()
        self._nn = _LabelIndex(None, None, None, {})

    def rows(self, slice_map: SliceMap) -> MapRows:
        """The map's ``(image, slice) -> row`` lookup (kept per map)."""
        kept = self._rows
        if not kept.holds(slice_map):
            kept = self._rows = _ForMap(weakref.ref(slice_map), MapRows(slice_map))
        return kept.value

    def prepare(self, slice_map: SliceMap) -> bool:
        """Start building ``slice_map``'s FPS index in a background thread unless it exists or is being built
        (at a million slices a build takes about a second: made when a new map appears, the first suggestion
        from it does not wait for it). Returns whether a build started."""
        with self._fps_lock:
            if self._fps.holds(slice_map) or self._building.holds(slice_map):
                return False
            ref = weakref.ref(slice_map)
            thread = threading.Thread(target=self._build, args=(ref,), daemon=True, name="ss_stylegan-fps-index")
            self._building = _ForMap(ref, thread)
            thread.start()
            return True

    def suggestions(self, slice_map: SliceMap) -> SuggestionIndex:
        """The map's FPS index: the kept one, the one being built in the background (waited for), or one built
        now. The caller serialises the use of the index together with the reservation of its picks."""
        with self._fps_lock:
            if self._fps.holds(slice_map):
                return self._fps.value
            building = self._building.value if self._building.holds(slice_map) else None
        if building is not None:
            building.join()
            with self._fps_lock:
                if self._fps.holds(slice_map):
                    return self._fps.value
        return self._install(slice_map, self._new_index(slice_map))

    def _build(self, ref: weakref.ref[SliceMap]) -> None:
        slice_map = ref()
        if slice_map is None:
            return
        try:
            self._install(slice_map, self._new_index(slice_map))
        finally:
            with self._fps_lock:
                if self._building.map_ref is ref:
                    self._building = _NOTHING

    def _new_index(self, slice_map: SliceMap) -> SuggestionIndex:
        return SuggestionIndex(slice_map.xy, start="central", random_state=self.random_state, busy=self.busy)

    def _install(self, slice_map: SliceMap, index: SuggestionIndex) -> SuggestionIndex:
        """Keep ``index`` for ``slice_map`` unless one is kept for it already (that one is returned)."""
        with self._fps_lock:
            if self._fps.holds(slice_map):
                return self._fps.value
            self._fps = _ForMap(weakref.ref(slice_map), index)
        settle_garbage_collector()
        return index

    def predict(self, slice_map: SliceMap, xy: np.ndarray, version: Any, labelled: Callable[[], dict[tuple[str, int], str]],
                flags: dict[tuple[str, int], str], removed: np.ndarray) -> tuple[Prediction, np.ndarray]:
        """1-NN of ``xy`` against the usable labels of ``slice_map``'s slices: the prediction (neighbours
        are map rows) and the labelled classes (the columns of ``scores``).

        Args:
            version: the label store's version (nothing is recomputed while it, ``flags`` and ``removed``
                are the same objects as at the last call).
            labelled: ``{(image, slice): class}`` of every stored label (called only when something changed).
            flags: flagged labels (left out).
            removed: rows of studies that left the folder or changed on disk (left out).

        Raises:
            NotReadyError: no slice of the map has a usable label.
        """
        with self._nn_lock:
            index = self._label_index(slice_map, version, labelled, flags, removed)
            return index.predict(xy), index.classes_

    def labelled_rows(self, slice_map: SliceMap, version: Any, labelled: Callable[[], dict[tuple[str, int], str]],
                      flags: dict[tuple[str, int], str], removed: np.ndarray) -> dict[int, str]:
        """The map rows with a usable label and their classes (what the 1-NN index holds), for the classifiers
        in W: the same object while those labels are the same (a classifier fitted to it is kept), never changed
        in place. Raises :class:`NotReadyError` when there is none."""
        with self._nn_lock:
            self._label_index(slice_map, version, labelled, flags, removed)
            return self._nn.applied

    def require_labels(self, slice_map: SliceMap, version: Any, labelled: Callable[[], dict[tuple[str, int], str]],
                       flags: dict[tuple[str, int], str], removed: np.ndarray) -> None:
        """Raise :class:`NotReadyError` when no slice of the map has a usable label (before costly work)."""
        with self._nn_lock:
            self._label_index(slice_map, version, labelled, flags, removed)

    def _label_index(self, slice_map: SliceMap, version: Any, labelled: Callable[[], dict[tuple[str, int], str]],
                     flags: dict[tuple[str, int], str], removed: np.ndarray) -> NearestLabelIndex:
        """The map's 1-NN index brought to the usable labels (only the labels that changed are applied).
        Caller holds ``_nn_lock``."""
        state = self._nn
        index, inputs, kept = state.index, state.inputs, state.applied
        if index is None or state.map_ref is None or state.map_ref() is not slice_map:
            index, inputs, kept = NearestLabelIndex(slice_map.xy), None, {}
        if inputs is None or version != inputs.version or flags is not inputs.flags or removed is not inputs.removed:
            row_of = self.rows(slice_map)
            gone = set(slice_map.image_ids[removed].tolist())
            wanted = {row: c for k, c in labelled().items()
                      if k not in flags and k[0] not in gone and (row := row_of.get(k)) is not None}
            dropped = [r for r in kept if r not in wanted]
            changed = {r: c for r, c in wanted.items() if kept.get(r) != c}
            if dropped:
                index.remove_labels(dropped)
            if changed:
                index.set_labels(list(changed), list(changed.values()))
            kept, inputs = (kept if wanted == kept else wanted), _LabelInputs(version, flags, removed)
        self._nn = _LabelIndex(weakref.ref(slice_map), index, inputs, kept)
        if index.n_labelled == 0:
            raise NotReadyError(
                "no embedded slice is labelled yet: label at least one slice of each class "
                f"({', '.join(self.classes)}) with PUT /slicelabels/ before classifying"
            )
        return index
