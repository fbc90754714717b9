"""The per-map indexes behind suggestions and classification, changed instead of rebuilt.

Farthest point sampling keeps every slice's distance to its nearest labelled or reserved slice
(:class:`~ss_stylegan.selection.incremental.SuggestionIndex`), and 1-NN classification keeps a k-d tree per class
(:class:`~ss_stylegan.classification.nearest.NearestLabelIndex`). Their answers equal those of the stateless selector
and classifier; a new map (a training, or studies embedded into it) gets new indexes on first use. Each index
is held through a weak reference to its map, so it never keeps a replaced map in memory.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

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


class MapIndexes:
    """The row lookup, the FPS index and the 1-NN index of the current map.

    Args:
        random_state: seed of the FPS index's first pick when nothing is labelled (``central`` start).
        classes: the configured class names (for the message when nothing is labelled).
    """

    def __init__(self, random_state: int, classes: Sequence[str]) -> None:
        self.random_state = random_state
        self.classes = tuple(classes)
        self._rows: tuple[weakref.ref[SliceMap] | None, MapRows | None] = (None, None)
        self._fps: tuple[weakref.ref[SliceMap] | None, SuggestionIndex | None] = (None, None)
        self._fps_lock = threading.Lock()   # installing an FPS index; the build itself runs outside it
        self._building: tuple[weakref.ref[SliceMap] | None, threading.Thread | None] = (None, None)
        self._nn_lock = threading.Lock()
        self._nn: tuple[weakref.ref[SliceMap] | None, NearestLabelIndex | None, Any, dict[int, str]] = \
            (None, None, None, {})

    def rows(self, slice_map: SliceMap) -> MapRows:
        """The map's ``(image, slice) -> row`` lookup (kept per map)."""
        kept_map, rows = self._rows
        if rows is None or kept_map is None or kept_map() is not slice_map:
            rows = MapRows(slice_map)
            self._rows = (weakref.ref(slice_map), rows)
        return rows

    def prepare(self, slice_map: SliceMap) -> bool:
        """Start building ``slice_map``'s FPS index in a background thread unless it exists or is being built
        (at a million slices a build takes about a second: made when a new map appears, the first suggestion
        from it does not wait for it). Returns whether a build started."""
        with self._fps_lock:
            if self._kept(self._fps[0], slice_map) or self._kept(self._building[0], slice_map):
                return False
            ref = weakref.ref(slice_map)
            thread = threading.Thread(target=self._build, args=(ref,), daemon=True, name="ss_stylegan-fps-index")
            self._building = (ref, thread)
            thread.start()
            return True

    def suggestions(self, slice_map: SliceMap) -> SuggestionIndex:
        """The map's FPS index: the kept one, the one being built in the background (waited for), or one built
        now. The caller serialises the use of the index together with the reservation of its picks."""
        with self._fps_lock:
            kept_map, index = self._fps
            if index is not None and self._kept(kept_map, slice_map):
                return index
            building_map, thread = self._building
            building = thread if self._kept(building_map, slice_map) else None
        if building is not None:
            building.join()
            with self._fps_lock:
                kept_map, index = self._fps
                if index is not None and self._kept(kept_map, slice_map):
                    return index
        return self._install(slice_map, SuggestionIndex(slice_map.xy, start="central", random_state=self.random_state))

    def _build(self, ref: weakref.ref[SliceMap]) -> None:
        slice_map = ref()
        if slice_map is None:
            return
        try:
            self._install(slice_map, SuggestionIndex(slice_map.xy, start="central", random_state=self.random_state))
        finally:
            with self._fps_lock:
                if self._building[0] is ref:
                    self._building = (None, None)

    def _install(self, slice_map: SliceMap, index: SuggestionIndex) -> SuggestionIndex:
        """Keep ``index`` for ``slice_map`` unless one is kept for it already (that one is returned)."""
        with self._fps_lock:
            kept_map, kept = self._fps
            if kept is not None and self._kept(kept_map, slice_map):
                return kept
            self._fps = (weakref.ref(slice_map), index)
        settle_garbage_collector()
        return index

    @staticmethod
    def _kept(ref: weakref.ref[SliceMap] | None, slice_map: SliceMap) -> bool:
        return ref is not None and ref() is slice_map

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

    def require_labels(self, slice_map: SliceMap, version: Any, labelled: Callable[[], dict[tuple[str, int], str]],
                       flags: dict[tuple[str, int], str], removed: np.ndarray) -> None:
        """Raise :class:`NotReadyError` when no slice of the map has a usable label (before costly work)."""
        with self._nn_lock:
            self._label_index(slice_map, version, labelled, flags, removed)

    def _label_index(self, slice_map: SliceMap, version: Any, labelled: Callable[[], dict[tuple[str, int], str]],
                     flags: dict[tuple[str, int], str], removed: np.ndarray) -> NearestLabelIndex:
        """The map's 1-NN index brought to the usable labels (only the labels that changed are applied).
        Caller holds ``_nn_lock``."""
        kept_map, index, kept_key, kept = self._nn
        if index is None or kept_map is None or kept_map() is not slice_map:
            index, kept_key, kept = NearestLabelIndex(slice_map.xy), None, {}
        if kept_key is None or version != kept_key[0] or flags is not kept_key[1] or removed is not kept_key[2]:
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
            kept, kept_key = wanted, (version, flags, removed)
        self._nn = (weakref.ref(slice_map), index, kept_key, kept)
        if index.n_labelled == 0:
            raise NotReadyError(
                "no embedded slice is labelled yet: label at least one slice of each class "
                f"({', '.join(self.classes)}) with PUT /slicelabels/ before classifying"
            )
        return index
